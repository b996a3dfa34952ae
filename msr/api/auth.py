"""How the REST API knows who is calling: Basic (username + password or personal access
token), Bearer (a personal access token alone), or the web UI's session (with CSRF)."""

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from accounts.credentials import check_credentials
from accounts.models import AccessToken


class BasicCredentialsAuthentication(authentication.BasicAuthentication):
    www_authenticate_realm = "msr"

    def authenticate_credentials(self, userid, password, request=None):
        user = check_credentials(userid, password)
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid username, password or token.")
        return (user, None)


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer msrpat_…`: a personal access token, no username needed."""

    def authenticate(self, request):
        scheme, _, secret = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = AccessToken.find(secret.strip(), AccessToken.PERSONAL)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        AccessToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return (token.user, token)

    def authenticate_header(self, request):
        return 'Bearer realm="msr"'


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
