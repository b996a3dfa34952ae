"""Single sign-on with an OpenID Connect provider (MSR_OIDC_*), on Authlib's Django client.

The flow is the authorization code flow with PKCE (S256), state and nonce:
1. /oidc/login/ loads the provider's discovery document from the issuer URL, refusing one
   whose `issuer` is not the configured issuer (OpenID Connect Discovery §4.3), and sends
   the browser to the provider's authorization endpoint; Authlib keeps state, nonce and
   the PKCE verifier in the session.
2. /oidc/callback/ checks the state, exchanges the code (with the verifier) at the token
   endpoint, and validates the ID token: signature against the provider's JWKS, iss, aud,
   exp, iat and nonce (Authlib on joserfc). Claims the ID token lacks are read from the
   userinfo endpoint.
3. accounts.sso finds or makes the account (by issuer and subject, never by name),
   accounts.teamsync makes the teams bound to single sign-on groups follow the groups
   claim, and the sign-in is audited like a password sign-in.
Every request to the provider (discovery, JWKS, token, userinfo) goes through the egress
check (msr/egress.py). Any failure is a readable page (400, 403, 502 or 503), audited as a
failed sign-in, with nothing created; codes, tokens and the client secret are never logged.
"""

import functools
import logging
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from urllib.parse import urlsplit

import requests
from authlib.integrations.base_client import MismatchingStateError, OAuthError
from authlib.integrations.django_client import DjangoOAuth2App, OAuth
from authlib.integrations.requests_client import OAuth2Session
from django.conf import settings
from django.contrib.auth import login
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET
from joserfc.errors import JoseError

from accounts import sso as accounts_sso
from accounts import teamsync
from msr import egress
from msr.crypto import decrypt, encrypt
from msr.signin import audit_single_sign_on, note_session

log = logging.getLogger(__name__)

ID_TOKEN = "oidc_id_token"  # in the session, for the provider's logout (id_token_hint)
NEXT = "oidc_next"
# Discovery documents are cached per process for this long (the JWKS is refetched at
# once when an ID token names a key it does not hold).
METADATA_SECONDS = 3600


class Refused(Exception):
    """A sign-in that cannot go on: the HTTP status and the message for the person; `reason`
    is for the audit trail and the log (no secret in either)."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(reason)
        self.status, self.reason, self.message = status, reason, message


def _unreachable(error: Exception) -> Refused:
    reason = egress.describe(error)
    if isinstance(error, requests.exceptions.SSLError):
        reason += " (check MSR_OIDC_CA_FILE and the host name in MSR_OIDC_ISSUER)"
    return Refused(503, f"provider unreachable: {reason}",
                   f"MSR cannot reach {settings.OIDC_PROVIDER_NAME} right now, so single sign-on is not "
                   "possible. Try again later; personal access tokens and local accounts still work.")


def _provider_answer(reason: str) -> Refused:
    return Refused(502, reason, f"{settings.OIDC_PROVIDER_NAME} gave an answer MSR cannot accept, so you "
                   "are not signed in. Try again; if it keeps happening, tell an MSR administrator "
                   "(the server's log says why).")


@contextmanager
def _talking_to_provider():
    """What can go wrong in a request to the provider, as a Refused (503: it did not
    answer or egress refused it; 502: its answer is unusable)."""
    try:
        yield
    except requests.HTTPError as e:
        raise _provider_answer(f"{urlsplit(e.request.url).path} answered HTTP {e.response.status_code}") from None
    except (requests.RequestException, egress.EgressRefused) as e:
        raise _unreachable(e) from None
    except JoseError as e:
        raise _provider_answer(f"ID token refused: {type(e).__name__}: {str(e)[:200]}") from None
    except (ValueError, KeyError, RuntimeError) as e:  # not JSON, not a JWK set, an endpoint missing
        raise _provider_answer(f"unusable provider answer: {type(e).__name__}: {str(e)[:200]}") from None


class _ProviderSession(OAuth2Session):
    """Authlib's requests session, with every connection through the egress check, the
    configured CA and timeout, and no proxy from the environment (like egress.session())."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("default_timeout", settings.OIDC_TIMEOUT)
        super().__init__(*args, **kwargs)
        self.trust_env = False
        adapter = egress.GuardedAdapter()
        self.mount("http://", adapter)
        self.mount("https://", adapter)
        self.verify = settings.OIDC_CA_FILE or True


class _Provider(DjangoOAuth2App):
    client_cls = _ProviderSession
    _metadata_lock = threading.Lock()  # gunicorn's threads share one provider per process

    def load_server_metadata(self):
        with self._metadata_lock:
            return self._load_server_metadata()

    def _load_server_metadata(self):
        loaded = self.server_metadata.get("_loaded_at")
        if loaded is not None and time.time() - loaded > METADATA_SECONDS:
            self.server_metadata.clear()
        if "_loaded_at" not in self.server_metadata:
            issuer = super().load_server_metadata().get("issuer")
            if issuer != settings.OIDC_ISSUER:
                self.server_metadata.clear()  # (the dict Authlib returned)
                raise _provider_answer(f"discovery names the issuer {str(issuer)[:200]!r}, "
                                       f"not MSR_OIDC_ISSUER {settings.OIDC_ISSUER!r}")
        return self.server_metadata


class _Registry(OAuth):
    oauth2_client_cls = _Provider


@functools.lru_cache(maxsize=1)
def _provider_for(issuer: str, client_id: str, client_secret: str, scopes: str) -> _Provider:
    return _Registry().register(
        name="oidc", client_id=client_id, client_secret=client_secret,
        server_metadata_url=f"{issuer.rstrip('/')}/.well-known/openid-configuration",
        client_kwargs={"scope": scopes, "code_challenge_method": "S256"})


def provider() -> _Provider:
    if not settings.OIDC_ISSUER:
        raise Http404("single sign-on is not configured")
    return _provider_for(settings.OIDC_ISSUER, settings.OIDC_CLIENT_ID, settings.OIDC_CLIENT_SECRET,
                         settings.OIDC_SCOPES)


def _absolute(request, name: str) -> str:
    path = reverse(name)
    return f"{settings.PUBLIC_URL}{path}" if settings.PUBLIC_URL else request.build_absolute_uri(path)


def _refused_page(request, refusal: Refused, username: str = ""):
    log.warning("single sign-on refused: %s", refusal.reason)
    audit_single_sign_on(request, username, False, reason=refusal.reason[:300])
    return render(request, "registration/sso_refused.html", {
        "message": refusal.message, "provider": settings.OIDC_PROVIDER_NAME}, status=refusal.status)


@require_GET
def start(request):
    """Send the browser to the provider (step 1)."""
    app = provider()
    next_url = request.GET.get("next", "")
    if next_url and url_has_allowed_host_and_scheme(next_url, {request.get_host()}, request.is_secure()):
        request.session[NEXT] = next_url
    try:
        with _talking_to_provider():
            return app.authorize_redirect(request, _absolute(request, "oidc-callback"))
    except Refused as refusal:
        return _refused_page(request, refusal)


def _claims(app: _Provider, token: dict) -> dict:
    """The ID token's claims, completed from the userinfo endpoint when it lacks one MSR
    reads (providers may keep e.g. groups out of the ID token)."""
    claims = dict(token["userinfo"])
    wanted = (settings.OIDC_CLAIM_USERNAME, settings.OIDC_CLAIM_FULL_NAME, settings.OIDC_CLAIM_EMAIL,
              settings.OIDC_CLAIM_GROUPS)
    if all(name in claims for name in wanted) or not app.server_metadata.get("userinfo_endpoint"):
        return claims
    userinfo = app.userinfo(token=token)
    if userinfo.get("sub") != claims["sub"]:  # OpenID Connect Core §5.3.2
        raise _provider_answer("the userinfo endpoint answered for another subject")
    return {**userinfo, **claims}


def identity_from(claims: dict) -> accounts_sso.Identity:
    """Who signed in, read with the MSR_OIDC_CLAIM_* names. The user name is the username
    claim, else the part of the e-mail before the @, lowercased."""
    def text(name):
        value = claims.get(name)
        return value.strip() if isinstance(value, str) else ""

    username = text(settings.OIDC_CLAIM_USERNAME) or text(settings.OIDC_CLAIM_EMAIL).partition("@")[0]
    groups = claims.get(settings.OIDC_CLAIM_GROUPS) or []
    if isinstance(groups, str):
        groups = [groups]
    return accounts_sso.Identity(
        issuer=settings.OIDC_ISSUER, subject=str(claims["sub"]), username=username.lower(),
        full_name=text(settings.OIDC_CLAIM_FULL_NAME)[:200], email=text(settings.OIDC_CLAIM_EMAIL)[:254],
        groups=frozenset(str(g) for g in groups if isinstance(g, (str, int))))


def _token(request, app: _Provider) -> dict:
    """Steps 2: the code exchanged, the ID token validated. Raises Refused."""
    try:
        with _talking_to_provider():
            token = app.authorize_access_token(request)
    except MismatchingStateError:
        raise Refused(400, "missing or unknown state", "This sign-in cannot be completed: it was not "
                      "started from this browser, or it was already used or has expired. Sign in again.") from None
    except OAuthError as e:
        if request.GET.get("error"):
            code = str(request.GET["error"])[:100]
            raise Refused(403 if code == "access_denied" else 400, f"provider error {code}",
                          f"{settings.OIDC_PROVIDER_NAME} did not sign you in ({code}).") from None
        raise _provider_answer(f"token request refused: {str(e.error)[:100]}") from None
    if "userinfo" not in token:
        raise _provider_answer("the token response holds no ID token")
    return token


@require_GET
def callback(request):
    """The provider sends the browser back here (steps 2 and 3)."""
    app = provider()
    username = ""
    try:
        token = _token(request, app)
        with _talking_to_provider():
            identity = identity_from(_claims(app, token))
        username = identity.username
        try:
            user, created = accounts_sso.account_for(identity, settings.OIDC_ADMIN_GROUP)
        except accounts_sso.SignInRefused as e:
            raise Refused(403, f"account refused: {e}", str(e)) from None
    except Refused as refusal:
        return _refused_page(request, refusal, username)
    teams = teamsync.apply_sso_groups(user, identity.groups)
    _keep_refresh_token(user, token.get("refresh_token"))
    next_url = request.session.pop(NEXT, None)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    note_session(request)
    request.session[ID_TOKEN] = token["id_token"]
    audit_single_sign_on(request, user.username, True, created=created, **teams)
    return redirect(next_url or settings.LOGIN_REDIRECT_URL)


def provider_name() -> str:
    return settings.OIDC_PROVIDER_NAME


def _keep_refresh_token(user, refresh_token: str | None) -> None:
    """What the provider gave at a sign-on (or a check) to ask it again later."""
    user.sso_refresh_token = encrypt(refresh_token) if refresh_token else ""
    user.sso_checked_at, user.sso_ended_at = timezone.now(), None
    user.save(update_fields=["sso_refresh_token", "sso_checked_at", "sso_ended_at"])


def confirm(user) -> bool:
    """Whether the provider still stands by `user`'s latest single sign-on, before MSR
    honours a token it issued them (personal access token, docker login's refresh token):
    at most every MSR_OIDC_RECHECK_SECONDS, MSR makes a refresh-token grant with the refresh
    token of that sign-on (Harbor does the same for its CLI secrets). The provider refusing
    it (`invalid_grant`: signed out, disabled or deleted there, or the token expired) ends
    the user's tokens until they sign in again; a provider that does not answer does not
    (it is logged, and asked again at the next use). Without a refresh token (the provider
    gave none: add `offline_access` to MSR_OIDC_SCOPES where it needs it) nothing is asked."""
    if not settings.OIDC_ISSUER or not settings.OIDC_RECHECK_SECONDS:
        return True
    fresh = timezone.now() - timedelta(seconds=settings.OIDC_RECHECK_SECONDS)
    if user.sso_ended_at is not None:
        return False
    if not user.sso_refresh_token or (user.sso_checked_at and user.sso_checked_at > fresh):
        return True
    with transaction.atomic():
        # One check at a time per user: the provider may rotate refresh tokens, and a second
        # check with the one the first just spent would look like a refusal.
        current = type(user).objects.select_for_update().get(pk=user.pk)
        if current.sso_ended_at is not None:
            return False
        if not current.sso_refresh_token or (current.sso_checked_at and current.sso_checked_at > fresh):
            return True
        app = provider()
        try:
            with _talking_to_provider():
                metadata = app.load_server_metadata()
                try:
                    with app._get_oauth_client(**metadata) as client:
                        token = client.refresh_token(metadata["token_endpoint"],
                                                     refresh_token=decrypt(current.sso_refresh_token))
                except (OAuthError, requests.HTTPError) as e:
                    # RFC 6749 §5.2: 400 is the grant refused (invalid_grant: the refresh token
                    # is revoked, expired, or its user gone); 401 is MSR's client refused.
                    status = e.response.status_code if isinstance(e, requests.HTTPError) else 400
                    refused = status == 400 and getattr(e, "error", "invalid_grant") in (
                        "invalid_grant", "invalid_request", "unauthorized_client")
                    if not refused:
                        raise
                    current.sso_ended_at = timezone.now()
                    current.save(update_fields=["sso_ended_at"])
                    log.info("single sign-on of %s has ended at the provider (its token endpoint refused the "
                             "refresh grant): their tokens are refused until they sign in again", user.username)
                    return False
        except (Refused, OAuthError, ValueError) as e:
            log.warning("single sign-on check of %s not possible: %s; tokens still honoured", user.username,
                        getattr(e, "reason", None) or getattr(e, "error", None) or e)
            return True
        _keep_refresh_token(current, token.get("refresh_token") or decrypt(current.sso_refresh_token))
        log.info("single sign-on of %s confirmed by the provider", user.username)
        return True


def end_session_url(request, id_token: str | None) -> str | None:
    """The provider's logout (RP-initiated logout) for a session MSR just ended, when the
    session came from single sign-on and the provider's discovery names one."""
    if not (settings.OIDC_ISSUER and id_token):
        return None
    try:
        app = provider()
        if not app.load_server_metadata().get("end_session_endpoint"):
            return None
        return app.create_logout_url(post_logout_redirect_uri=_absolute(request, "ui:login"),
                                     id_token_hint=id_token, client_id=settings.OIDC_CLIENT_ID)["url"]
    except (Refused, requests.RequestException, egress.EgressRefused, ValueError) as e:
        log.warning("single sign-on logout: MSR's session ended, the provider's not: %s", e)
        return None
