"""/api/v0/meta/settings: settings of the whole deployment that system admins change at
run time. Today: read-only mode (msr/readonly.py)."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import APIException
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from msr import readonly


class MetaSettingsSerializer(serializers.Serializer):
    readOnly = serializers.BooleanField(
        help_text="read-only mode: writes on /v2/ and the API refused, pulls and the UI served")
    readOnlyFromEnvironment = serializers.BooleanField(read_only=True, help_text="MSR_READ_ONLY=true holds it on")
    readOnlyRuntime = serializers.BooleanField(read_only=True, help_text="the switch this endpoint changes")
    readOnlyChangedAt = serializers.DateTimeField(read_only=True, allow_null=True)
    readOnlyChangedBy = serializers.CharField(read_only=True)
    cacheSeconds = serializers.FloatField(read_only=True, help_text="how late a web process may see a change")


class ReadOnlyLocked(APIException):
    status_code = 409
    default_code = "read_only_from_environment"


class MetaSettings(APIView):
    """Read-only mode, for system admins. `PATCH {"readOnly": false}` works while the
    registry is read-only (it is how one leaves it), unless MSR_READ_ONLY holds it on (409)."""

    permission_classes = [IsAdminUser]
    serializer_class = MetaSettingsSerializer

    def get(self, request):
        return Response(MetaSettingsSerializer(readonly.state()).data)

    @extend_schema(request=MetaSettingsSerializer, responses=MetaSettingsSerializer)
    def patch(self, request):
        serializer = MetaSettingsSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        if "readOnly" in serializer.validated_data:
            try:
                readonly.set_read_only(serializer.validated_data["readOnly"], request.user, request)
            except readonly.ReadOnlyLocked as e:
                raise ReadOnlyLocked(str(e)) from None
        return Response(MetaSettingsSerializer(readonly.state()).data)
