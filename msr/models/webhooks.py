from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Namespace
from msr.models.registry import Repository


class Webhook(models.Model):
    """A subscription: POST events of one type, for one repository or a whole namespace,
    to an endpoint, signed with an HMAC of the subscription's secret."""

    TAG_PUSH, TAG_DELETE, TAG_PRUNED = "TAG_PUSH", "TAG_DELETE", "TAG_PRUNED"
    MANIFEST_PUSH, MANIFEST_DELETE = "MANIFEST_PUSH", "MANIFEST_DELETE"
    PROMOTION, PUSH_MIRRORING, POLL_MIRRORING = "PROMOTION", "PUSH_MIRRORING", "POLL_MIRRORING"
    TYPES = [(t, t) for t in (TAG_PUSH, TAG_DELETE, TAG_PRUNED, MANIFEST_PUSH, MANIFEST_DELETE,
                              PROMOTION, PUSH_MIRRORING, POLL_MIRRORING)]

    event_type = models.CharField(max_length=20, choices=TYPES)
    namespace = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="webhooks")
    # Empty: every repository of the namespace.
    repository = models.ForeignKey(Repository, null=True, blank=True, on_delete=models.CASCADE,
                                   related_name="webhooks")
    endpoint = models.URLField(max_length=1000)
    # Fernet-encrypted (msr.crypto); the HMAC key must be recoverable, so it is not hashed.
    secret_encrypted = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"{self.event_type} {self.key} → {self.endpoint}"

    @property
    def key(self) -> str:
        return self.repository.full_name if self.repository_id else self.namespace.name


class WebhookDelivery(models.Model):
    """One event to deliver to one webhook; written in the transaction of the change
    (outbox), delivered by a worker, with every attempt recorded."""

    PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
    STATUSES = [(s, s) for s in (PENDING, SUCCEEDED, FAILED)]

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event_type = models.CharField(max_length=20)
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=STATUSES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A worker sending this delivery holds it until then: a duplicate message (the outbox
    # publishes at least once) finds it held and does not send it a second time.
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["webhook", "-created_at"], name="delivery_webhook_idx")]


class WebhookAttempt(models.Model):
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="unique_attempt_number")
        ]
        ordering = ["number"]
