"""/api/v0/tokens: personal access tokens (the secret is shown once, at creation);
/api/v0/refreshTokens: the refresh tokens `docker login` keeps; /api/v0/sessions: web
sessions. Users list and end their own (system admins: `?user=` for another's).

Creating and revoking tokens and ending sign-ins need the password or a signed-in
session: a personal access token alone cannot mint tokens that outlive it.
"""

from datetime import timedelta

from django.http import Http404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import TOKEN_SCOPES, AccessToken, UserSession
from msr.access import user_or_404
from msr.api.auth import require_password_or_session
from msr.events import record
from msr.models import Event


class _TokenTimes(serializers.ModelSerializer):
    """When a token (personal or refresh) was made, last used, ends and was revoked."""

    createdAt = serializers.DateTimeField(source="created_at", read_only=True)
    lastUsedAt = serializers.DateTimeField(allow_null=True, source="last_used_at", read_only=True)
    expiresAt = serializers.DateTimeField(allow_null=True, source="expires_at", read_only=True)
    revokedAt = serializers.DateTimeField(allow_null=True, source="revoked_at", read_only=True)


class TokenSerializer(_TokenTimes):
    user = serializers.CharField(source="user.username", read_only=True)
    scopes = serializers.SerializerMethodField()

    class Meta:
        model = AccessToken
        fields = ["id", "user", "name", "hint", "scopes", "createdAt", "lastUsedAt", "expiresAt", "revokedAt"]

    def get_scopes(self, token) -> list[str]:
        return sorted(token.scope_set)


class TokenCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    expiresInDays = serializers.IntegerField(min_value=1, max_value=3650, required=False)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=TOKEN_SCOPES), required=False,
                                   allow_empty=False, help_text="default: every scope")
    user = serializers.CharField(required=False, help_text="system admins: create for this user")


class NewTokenSerializer(TokenSerializer):
    token = serializers.CharField(read_only=True, help_text="the secret; shown only in this answer")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]


def _owner(request):
    """The caller, or (system admins) the user named by `?user=`."""
    user = request.user
    wanted = request.query_params.get("user")
    if wanted and wanted != user.username:
        if not user.is_superuser:
            raise PermissionDenied("Only system admins see other users' tokens and sessions.")
        user = user_or_404(wanted)
    return user


def _tokens_of_owner(view, kind):
    """The tokens of one kind of the caller (or of `?user=`); none while the schema is made."""
    if getattr(view, "swagger_fake_view", False):
        return AccessToken.objects.none()
    return AccessToken.objects.filter(user=_owner(view.request), kind=kind)


class TokenList(generics.ListCreateAPIView):
    """The caller's personal access tokens (system admins: `?user=` for another's)."""

    serializer_class = TokenSerializer

    def get_queryset(self):
        return _tokens_of_owner(self, AccessToken.PERSONAL).order_by("-created_at")

    @extend_schema(request=TokenCreateSerializer, responses={201: NewTokenSerializer})
    def post(self, request):
        require_password_or_session(request, "Creating a token")
        form = TokenCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        owner = request.user
        if data.get("user") and data["user"] != owner.username:
            if not owner.is_superuser:
                raise PermissionDenied("Only system admins create tokens for other users.")
            owner = user_or_404(data["user"])
        expires = timezone.now() + timedelta(days=data["expiresInDays"]) if data.get("expiresInDays") else None
        token, secret = AccessToken.issue(owner, AccessToken.PERSONAL, data["name"], expires,
                                          scopes=data.get("scopes") or TOKEN_SCOPES)
        record(Event.ACCOUNT, request.user.username, detail={
            "action": "create token", "account": owner.username, "token": token.hint,
            "scopes": sorted(token.scope_set)}, request=request)
        token.token = secret
        return Response(NewTokenSerializer(token).data, status=status.HTTP_201_CREATED)


def _own_token(request, token_id, kind) -> AccessToken:
    token = AccessToken.objects.filter(pk=token_id, kind=kind).select_related("user").first()
    if token is None or (token.user_id != request.user.pk and not request.user.is_superuser):
        raise Http404("no such token")
    return token


def revoke(request, token: AccessToken) -> None:
    """Revoke a token; for a personal access token, the refresh tokens obtained with it
    go with it (they would stop working anyway: their parent is revoked)."""
    now = timezone.now()
    AccessToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now)
    AccessToken.objects.filter(parent=token, revoked_at__isnull=True).update(revoked_at=now)
    record(Event.ACCOUNT, request.user.username, detail={
        "action": "revoke token", "account": token.user.username, "token": token.hint, "kind": token.kind},
        request=request)


class _OwnTokenDetail(APIView):
    """A token of the caller's (system admins: anyone's), by id, of one kind."""

    kind: str
    revoking: str  # what revoking it is called in a refusal

    def get(self, request, token_id):
        return Response(self.serializer_class(_own_token(request, token_id, self.kind)).data)

    def delete(self, request, token_id):
        """Revoke it: it stops working at once, and so does whatever it made (the refresh
        tokens `docker login` obtained with a personal access token)."""
        token = _own_token(request, token_id, self.kind)
        require_password_or_session(request, self.revoking)
        revoke(request, token)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenDetail(_OwnTokenDetail):
    serializer_class = TokenSerializer
    kind, revoking = AccessToken.PERSONAL, "Revoking a token"


class RefreshTokenSerializer(_TokenTimes):
    boundTo = serializers.SerializerMethodField(help_text="what ends it: the password, or a token")
    active = serializers.SerializerMethodField()
    clientIp = serializers.IPAddressField(source="client_ip", allow_null=True, read_only=True)
    userAgent = serializers.CharField(source="user_agent", read_only=True)

    class Meta:
        model = AccessToken
        fields = ["id", "hint", "boundTo", "active", "clientIp", "userAgent", "createdAt", "lastUsedAt",
                  "expiresAt", "revokedAt"]

    def get_boundTo(self, token) -> str:
        return f"token {token.parent.name} ({token.parent.hint}…)" if token.parent_id else "password"

    def get_active(self, token) -> bool:
        return (token.revoked_at is None and (token.expires_at is None or token.expires_at > timezone.now())
                and token.binding_holds())


class RefreshTokenList(generics.ListAPIView):
    """Refresh tokens of `docker login` (and other OAuth2 clients) of the caller: each
    keeps a client signed in until it expires, its token is revoked, the password
    changes, or it is revoked here."""

    serializer_class = RefreshTokenSerializer

    def get_queryset(self):
        return _tokens_of_owner(self, AccessToken.REFRESH).select_related("user", "parent").order_by("-created_at")


class RefreshTokenDetail(_OwnTokenDetail):
    serializer_class = RefreshTokenSerializer
    kind, revoking = AccessToken.REFRESH, "Revoking a sign-in"


class SessionSerializer(serializers.Serializer):
    id = serializers.CharField(source="public_id")
    current = serializers.SerializerMethodField()
    clientIp = serializers.IPAddressField(source="client_ip", allow_null=True)
    userAgent = serializers.CharField(source="user_agent")
    createdAt = serializers.DateTimeField(source="created_at", allow_null=True)
    expiresAt = serializers.DateTimeField(source="expire_date")

    def get_current(self, session) -> bool:
        request = self.context.get("request")
        return bool(request and request.session.session_key == session.session_key)


def _sessions(user):
    return UserSession.objects.filter(user=user, expire_date__gt=timezone.now()).order_by("-created_at")


class SessionList(generics.ListAPIView):
    """The caller's web sessions (signed-in browsers)."""

    serializer_class = SessionSerializer
    pagination_class = None

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return UserSession.objects.none()
        return _sessions(_owner(self.request))


class SessionDetail(APIView):
    serializer_class = SessionSerializer

    def delete(self, request, session_id):
        """End the session: that browser is signed out at its next request."""
        require_password_or_session(request, "Ending a session")
        found = next((s for s in _sessions(_owner(request)) if s.public_id == session_id), None)
        if found is None:
            raise Http404("no such session")
        found.delete()
        record(Event.ACCOUNT, request.user.username, detail={
            "action": "end session", "account": found.user.username if found.user else ""}, request=request)
        return Response(status=status.HTTP_204_NO_CONTENT)
