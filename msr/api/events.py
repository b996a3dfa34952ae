"""/api/v0/events: the audit trail, for system admins."""

import django_filters
from rest_framework import generics, serializers
from rest_framework.permissions import IsAdminUser

from msr.models import Event


class EventSerializer(serializers.ModelSerializer):
    createdAt = serializers.DateTimeField(source="created_at")
    clientIp = serializers.IPAddressField(source="client_ip", allow_null=True)

    class Meta:
        model = Event
        fields = ["id", "type", "actor", "repository", "tag", "digest", "detail", "clientIp", "createdAt"]


class EventFilter(django_filters.FilterSet):
    repository = django_filters.CharFilter()
    user = django_filters.CharFilter(field_name="actor")
    type = django_filters.ChoiceFilter(choices=Event.TYPES)
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")

    class Meta:
        model = Event
        fields = ["repository", "user", "type", "since"]


class EventList(generics.ListAPIView):
    """Pushes, pulls, deletes, logins and permission changes, newest first."""

    serializer_class = EventSerializer
    permission_classes = [IsAdminUser]
    filterset_class = EventFilter
    queryset = Event.objects.order_by("-created_at", "-id")
