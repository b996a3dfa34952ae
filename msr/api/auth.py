"""How the REST API knows who is calling: Basic (username + password or personal access
token), Bearer (a personal access token alone), or the web UI's session (with CSRF).

Every secret is checked by msr.signin (throttled, failures audited). `request.auth` is
the personal access token used, or None for a password or a session: some changes
(the password, tokens, sign-ins) need the password or a session, so that a leaked token
cannot make itself permanent (`require_password_or_session`). A personal access token
without the `api` scope is refused here.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from accounts.models import SCOPE_API, AccessToken
from msr.signin import API, DirectoryUnavailable, SingleSignOnEnded, Throttled, bearer, sign_in


class DirectoryUnavailableError(exceptions.APIException):
    status_code = 503
    default_detail = DirectoryUnavailable.message
    default_code = "directory_unavailable"


def _checked(credential):
    if credential.token is not None and SCOPE_API not in credential.token.scope_set:
        raise exceptions.PermissionDenied("This personal access token has no api scope.")
    return (credential.user, credential.token)


class BasicCredentialsAuthentication(authentication.BasicAuthentication):
    www_authenticate_realm = "msr"

    def authenticate_credentials(self, userid, password, request=None):
        try:
            credential = sign_in(request, userid, password, API)
        except Throttled as e:
            raise exceptions.Throttled(wait=e.retry_after, detail=str(e)) from None
        except DirectoryUnavailable:
            raise DirectoryUnavailableError() from None
        except SingleSignOnEnded as e:
            raise exceptions.AuthenticationFailed(str(e)) from None
        if credential is None:
            raise exceptions.AuthenticationFailed("Invalid username, password or token.")
        return _checked(credential)


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer msrpat_…`: a personal access token, no username needed."""

    def authenticate(self, request):
        scheme, _, secret = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        try:
            credential = bearer(request, secret.strip(), AccessToken.PERSONAL, API)
        except Throttled as e:
            raise exceptions.Throttled(wait=e.retry_after, detail=str(e)) from None
        except SingleSignOnEnded as e:
            raise exceptions.AuthenticationFailed(str(e)) from None
        if credential is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        return _checked(credential)

    def authenticate_header(self, request):
        return 'Bearer realm="msr"'


def require_password_or_session(request, what: str) -> None:
    """Refuse `what` to a caller who authenticated with a personal access token."""
    if isinstance(request.auth, AccessToken):
        raise exceptions.PermissionDenied(
            f"{what} needs your password or a signed-in session, not a personal access token.")


class BasicScheme(OpenApiAuthenticationExtension):
    target_class = BasicCredentialsAuthentication
    name = "basicAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "basic"}


class BearerScheme(OpenApiAuthenticationExtension):
    target_class = BearerTokenAuthentication
    name = "personalAccessToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "a personal access token"}
