"""Every check of a secret, in one place: the web sign-in, the token service (password,
personal access token, refresh token), Basic and Bearer credentials on the REST API and
on /metrics.

Each goes through the same three steps: the throttle (accounts/throttle.py) may refuse
before the secret is looked at; the secret is checked; the outcome is counted and every
failure is written to the audit trail with the entry point and the client's address.
"""

from dataclasses import dataclass

from django.utils import timezone

from accounts import throttle
from accounts.credentials import DirectoryUnavailable, check_credentials  # the error: re-exported
from accounts.models import AccessToken, User
from accounts.throttle import Throttled  # noqa: F401  (re-exported for the entry points)
from msr.events import client_ip, record
from msr.models import Event

UI, TOKEN, API, METRICS = "ui", "token", "api", "metrics"


class SingleSignOnEnded(Exception):
    """A single sign-on user's token, refused because the provider no longer stands by
    their latest sign-on (signed out, disabled or deleted there, or it expired): msr/sso.py."""

    def __init__(self, provider: str):
        super().__init__(f"Your single sign-on with {provider} has ended (at the provider: signed out, "
                         "disabled, or expired), so MSR refuses your tokens. Sign in to MSR in a browser "
                         "again; your tokens then work again.")


def _still_signed_on(request, credential, method: str, via: str) -> None:
    """A token of a single sign-on user counts only while the provider stands by the
    user's sign-on (asked at most every MSR_OIDC_RECHECK_SECONDS). Raises SingleSignOnEnded."""
    if credential.user.source != User.SSO:
        return
    from msr import sso

    if not sso.confirm(credential.user):
        _audit(request, credential.user.username, False, method, via, single_sign_on_ended=True)
        raise SingleSignOnEnded(sso.provider_name())


@dataclass
class Credential:
    """Who signed in, and with which personal access or refresh token (None: a password)."""

    user: User
    token: AccessToken | None = None

    @property
    def method(self) -> str:
        if self.token is None:
            return "password"
        return "refresh_token" if self.token.kind == AccessToken.REFRESH else "token"


def _method(secret: str) -> str:
    if secret.startswith(AccessToken.PREFIXES[AccessToken.PERSONAL]):
        return "token"
    if secret.startswith(AccessToken.PREFIXES[AccessToken.REFRESH]):
        return "refresh_token"
    return "password"


def _audit(request, username: str, succeeded: bool, method: str, via: str, throttled: bool = False,
           directory_unavailable: bool = False, **more) -> None:
    detail = {"succeeded": succeeded, "method": method, "via": via, **more}
    if throttled:
        detail["throttled"] = True
    if directory_unavailable:
        detail["directory_unavailable"] = True
    record(Event.LOGIN, (username or "")[:150], detail=detail, request=request)


def audit_single_sign_on(request, username: str, succeeded: bool, **detail) -> None:
    """A web sign-in through the OpenID Connect provider (msr/sso.py): `detail` says why it
    was refused, or which teams the groups claim joined and left. Never a code or a token."""
    _audit(request, username, succeeded, "oidc", UI, **detail)


def note_session(request) -> None:
    """Where and how a web session was opened, for the user's list of sessions."""
    from accounts import sessions

    request.session[sessions.CLIENT_IP] = client_ip(request)
    request.session[sessions.USER_AGENT] = request.META.get("HTTP_USER_AGENT", "")[:200]
    request.session[sessions.SIGNED_IN_AT] = timezone.now().isoformat()


def sign_in(request, username: str, password: str, via: str, audit_success: bool = False,
            allow_tokens: bool = True) -> Credential | None:
    """Check a username and a password (or a personal access token used as one). Raises
    Throttled, or DirectoryUnavailable when only the company directory could tell (not
    counted as a failure: the person may well have typed the right password); None for
    wrong credentials."""
    address = client_ip(request)
    method = _method(password)
    try:
        attempt = throttle.check(username, address)
    except Throttled:
        _audit(request, username, False, method, via, throttled=True)
        raise
    found = None
    if allow_tokens or method == "password":
        try:
            found = check_credentials(username, password)
        except DirectoryUnavailable:
            _audit(request, username, False, method, via, directory_unavailable=True)
            raise
    if found is None:
        throttle.failed(attempt)
        _audit(request, username, False, method, via)
        return None
    throttle.succeeded(attempt)
    credential = Credential(*found)
    _still_signed_on(request, credential, method, via)
    if audit_success:
        _audit(request, credential.user.username, True, method, via)
    return credential


def bearer(request, secret: str, kind: str, via: str, audit_success: bool = False) -> Credential | None:
    """Check a personal access token or a refresh token presented alone (no username):
    throttled by the client's address."""
    address = client_ip(request)
    method = "refresh_token" if kind == AccessToken.REFRESH else "token"
    try:
        attempt = throttle.check("", address)
    except Throttled:
        _audit(request, "", False, method, via, throttled=True)
        raise
    token = AccessToken.find(secret, kind)
    if token is None:
        throttle.failed(attempt)
        _audit(request, "", False, method, via)
        return None
    AccessToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    credential = Credential(token.user, token)
    _still_signed_on(request, credential, method, via)
    if audit_success:
        _audit(request, token.user.username, True, method, via)
    return credential
