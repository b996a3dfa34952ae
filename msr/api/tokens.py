"""/api/v0/tokens: personal access tokens; the secret is shown once, at creation."""

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import AccessToken
from msr.access import user_or_404


class TokenSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username", read_only=True)
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)
    lastUsedAt = serializers.DateTimeField(allow_null=True, source="last_used_at", read_only=True)
    expiresAt = serializers.DateTimeField(allow_null=True, source="expires_at", read_only=True)
    revokedAt = serializers.DateTimeField(allow_null=True, source="revoked_at", read_only=True)

    class Meta:
        model = AccessToken
        fields = ["id", "user", "name", "hint", "createdAt", "lastUsedAt", "expiresAt", "revokedAt"]


class TokenCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    expiresInDays = serializers.IntegerField(min_value=1, max_value=3650, required=False)
    user = serializers.CharField(required=False, help_text="system admins: create for this user")


class NewTokenSerializer(TokenSerializer):
    token = serializers.CharField(read_only=True, help_text="the secret; shown only in this answer")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]


class TokenList(generics.ListCreateAPIView):
    """The caller's personal access tokens (system admins: `?user=` for another's)."""

    serializer_class = TokenSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return AccessToken.objects.none()
        user = self.request.user
        wanted = self.request.query_params.get("user")
        if wanted and wanted != user.username:
            if not user.is_superuser:
                raise PermissionDenied("Only system admins list other users' tokens.")
            user = user_or_404(wanted)
        return AccessToken.objects.filter(user=user, kind=AccessToken.PERSONAL).order_by("-created_at")

    @extend_schema(request=TokenCreateSerializer, responses={201: NewTokenSerializer})
    def post(self, request):
        form = TokenCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        owner = request.user
        if data.get("user") and data["user"] != owner.username:
            if not owner.is_superuser:
                raise PermissionDenied("Only system admins create tokens for other users.")
            owner = user_or_404(data["user"])
        expires = timezone.now() + timedelta(days=data["expiresInDays"]) if data.get("expiresInDays") else None
        token, secret = AccessToken.issue(owner, AccessToken.PERSONAL, data["name"], expires)
        token.token = secret
        return Response(NewTokenSerializer(token).data, status=status.HTTP_201_CREATED)


class TokenDetail(APIView):
    serializer_class = TokenSerializer

    def _token(self, request, token_id):
        token = AccessToken.objects.filter(pk=token_id, kind=AccessToken.PERSONAL).select_related("user").first()
        if token is None or (token.user_id != request.user.pk and not request.user.is_superuser):
            from django.http import Http404

            raise Http404("no such token")
        return token

    def get(self, request, token_id):
        return Response(TokenSerializer(self._token(request, token_id)).data)

    def delete(self, request, token_id):
        """Revoke the token: it stops working at once for the API and for logins."""
        token = self._token(request, token_id)
        if token.revoked_at is None:
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
        return Response(status=status.HTTP_204_NO_CONTENT)
