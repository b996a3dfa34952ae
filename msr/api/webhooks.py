"""/api/v0/webhooks: subscriptions, their delivery log, and a test delivery."""

from django.db import transaction
from django.db.models import Q
from django.http import Http404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import ADMIN, repository_actions
from msr import egress
from msr.access import administers_namespace, require_namespace_admin
from msr.crypto import encrypt
from msr.models import Repository, Webhook, WebhookDelivery
from accounts.models import Namespace


class WebhookSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    type = serializers.ChoiceField(source="event_type", choices=[t for t, _ in Webhook.TYPES])
    key = serializers.CharField(max_length=300, help_text="namespace/repository, or a namespace for all of its repositories")
    endpoint = serializers.URLField(max_length=1000)
    secret = serializers.CharField(write_only=True, required=False, allow_blank=True, max_length=200,
                                   help_text="HMAC-SHA256 key for X-MSR-Signature; never returned")
    enabled = serializers.BooleanField(default=True)
    createdBy = serializers.CharField(source="created_by.username", read_only=True, default="")
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)

    def validate_endpoint(self, value):
        if not value.lower().startswith(("http://", "https://")):
            raise serializers.ValidationError("Use an http or https URL.")
        try:
            egress.check_url(value)
        except (ValueError, egress.EgressRefused) as e:
            raise serializers.ValidationError(str(e)) from None
        return value


class WebhookUpdateSerializer(serializers.Serializer):
    endpoint = serializers.URLField(max_length=1000, required=False)
    secret = serializers.CharField(write_only=True, required=False, allow_blank=True, max_length=200)
    enabled = serializers.BooleanField(required=False)


def _resolve_key(user, key: str) -> tuple[Namespace, Repository | None]:
    """The namespace and repository a webhook key names, if the user administers it."""
    namespace_name, _, repository_name = key.partition("/")
    namespace = Namespace.objects.filter(name=namespace_name).first()
    if namespace is None:
        raise serializers.ValidationError({"key": ["No such namespace or repository."]})
    if not repository_name:
        require_namespace_admin(user, namespace)
        return namespace, None
    repository = Repository.objects.filter(namespace=namespace, name=repository_name).first()
    actions = repository_actions(user, namespace, repository)
    if repository is None or "pull" not in actions:
        raise serializers.ValidationError({"key": ["No such namespace or repository."]})
    if ADMIN not in actions:
        from rest_framework.exceptions import PermissionDenied

        raise PermissionDenied("You need admin access to the repository.")
    return namespace, repository


def _visible_webhooks(user):
    """Webhooks on what `user` administers now (whoever created them), so that the admins
    of a repository see and can stop every webhook that watches it, and a creator who
    lost access no longer sees, edits or reads the deliveries of theirs."""
    webhooks = Webhook.objects.select_related("namespace", "repository__namespace", "created_by")
    if user.is_superuser:
        return webhooks
    namespaces = [n for n in Namespace.objects.filter(pk__in=webhooks.values("namespace_id"))
                  if administers_namespace(user, n)]
    repositories = [r.pk for r in Repository.objects.select_related("namespace").filter(
        pk__in=webhooks.filter(repository__isnull=False).values("repository_id"))
        if ADMIN in repository_actions(user, r.namespace, r)]
    return webhooks.filter(Q(repository__isnull=True, namespace__in=namespaces)
                           | Q(repository_id__in=repositories))


class WebhookList(generics.ListCreateAPIView):
    serializer_class = WebhookSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Webhook.objects.none()
        return _visible_webhooks(self.request.user).order_by("id")

    def create(self, request):
        form = WebhookSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        namespace, repository = _resolve_key(request.user, data["key"])
        webhook = Webhook.objects.create(
            event_type=data["event_type"], namespace=namespace, repository=repository,
            endpoint=data["endpoint"], secret_encrypted=encrypt(data.get("secret", "")),
            enabled=data["enabled"], created_by=request.user,
        )
        return Response(WebhookSerializer(webhook).data, status=status.HTTP_201_CREATED)


def _webhook(request, webhook_id) -> Webhook:
    webhook = _visible_webhooks(request.user).filter(pk=webhook_id).first()
    if webhook is None:
        raise Http404("no such webhook")
    return webhook


class WebhookDetail(APIView):
    serializer_class = WebhookSerializer

    def get(self, request, webhook_id):
        return Response(WebhookSerializer(_webhook(request, webhook_id)).data)

    @extend_schema(request=WebhookUpdateSerializer, responses=WebhookSerializer)
    def patch(self, request, webhook_id):
        webhook = _webhook(request, webhook_id)
        form = WebhookUpdateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        if "endpoint" in data:
            webhook.endpoint = WebhookSerializer().validate_endpoint(data["endpoint"])
        if "secret" in data:
            webhook.secret_encrypted = encrypt(data["secret"])
        if "enabled" in data:
            webhook.enabled = data["enabled"]
        webhook.save()
        return Response(WebhookSerializer(webhook).data)

    def delete(self, request, webhook_id):
        _webhook(request, webhook_id).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class AttemptSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    startedAt = serializers.DateTimeField(source="started_at")
    statusCode = serializers.IntegerField(source="status_code", allow_null=True)
    error = serializers.CharField(allow_blank=True)
    durationMs = serializers.IntegerField(source="duration_ms")


class DeliverySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    type = serializers.CharField(source="event_type")
    status = serializers.CharField()
    attempts = serializers.IntegerField()
    payload = serializers.JSONField()
    createdAt = serializers.DateTimeField(source="created_at")
    finishedAt = serializers.DateTimeField(source="finished_at", allow_null=True)
    log = AttemptSerializer(source="attempt_log", many=True)


class WebhookDeliveries(generics.ListAPIView):
    """The delivery log of a webhook, newest first, with every attempt."""

    serializer_class = DeliverySerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return WebhookDelivery.objects.none()
        webhook = _webhook(self.request, self.kwargs["webhook_id"])
        return webhook.deliveries.prefetch_related("attempt_log").order_by("-created_at", "-id")


class WebhookTest(APIView):
    serializer_class = DeliverySerializer

    @extend_schema(request=None, responses={202: DeliverySerializer})
    def post(self, request, webhook_id):
        """Queue a test delivery (same signature and retries as a real event)."""
        webhook = _webhook(request, webhook_id)
        payload = {"type": webhook.event_type, "createdAt": timezone.now().isoformat(),
                   "contents": {"test": True, "key": webhook.key}}
        with transaction.atomic():
            delivery = WebhookDelivery.objects.create(webhook=webhook, event_type=webhook.event_type,
                                                      payload=payload)
            from msr import outbox
            from msr.tasks import deliver_webhook

            outbox.send(deliver_webhook, delivery.pk, 1)
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
