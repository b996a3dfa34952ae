"""Celery tasks of the registry core."""

import hashlib
import hmac
import json
import logging
import time

import requests
from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from msr.crypto import decrypt
from msr.models import WebhookAttempt, WebhookDelivery

log = logging.getLogger(__name__)


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@shared_task(bind=True, max_retries=None, acks_late=True)
def deliver_webhook(self, delivery_id: int) -> str:
    """Deliver one webhook event.

    1. Reload the delivery; stop if it is no longer pending (a duplicate message, or a
       retry after success).
    2. POST the payload with `X-MSR-Signature: sha256=<HMAC of the body>`.
    3. Record the attempt; a 2xx ends the delivery.
    4. Otherwise retry after WEBHOOK_RETRY_BASE_SECONDS * 2**(attempt-1), until
       WEBHOOK_MAX_ATTEMPTS attempts, then mark it failed.
    """
    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.PENDING:
        return "skipped"
    webhook = delivery.webhook
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "MSR-Webhook/1",
        "X-MSR-Event": delivery.event_type,
        "X-MSR-Delivery": str(delivery.pk),
    }
    secret = decrypt(webhook.secret_encrypted)
    if secret:
        headers["X-MSR-Signature"] = signature(secret, body)
    number = delivery.attempts + 1
    started, status_code, error = time.monotonic(), None, ""
    try:
        response = requests.post(webhook.endpoint, data=body, headers=headers,
                                 timeout=settings.WEBHOOK_TIMEOUT_SECONDS, allow_redirects=False)
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}: {response.text[:500]}"
    except requests.RequestException as e:
        error = f"{type(e).__name__}: {e}"[:1000]
    succeeded = not error
    with transaction.atomic():
        WebhookAttempt.objects.get_or_create(
            delivery=delivery, number=number,
            defaults={"status_code": status_code, "error": error,
                      "duration_ms": int((time.monotonic() - started) * 1000)},
        )
        final = succeeded or number >= settings.WEBHOOK_MAX_ATTEMPTS
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            attempts=number,
            status=(WebhookDelivery.SUCCEEDED if succeeded
                    else WebhookDelivery.FAILED if final else WebhookDelivery.PENDING),
            finished_at=timezone.now() if final else None,
        )
    if succeeded:
        return "delivered"
    if number >= settings.WEBHOOK_MAX_ATTEMPTS:
        log.warning("webhook %s: delivery %s failed after %d attempts", webhook.pk, delivery.pk, number)
        return "failed"
    countdown = settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** (number - 1)
    raise self.retry(countdown=countdown)


@shared_task(acks_late=True)
def collect_garbage() -> dict:
    """Garbage collection with the configured grace period and untagged-manifest policy
    (msr/gc.py); beat runs it every GC_INTERVAL_SECONDS. Safe to run twice or alongside
    `msr manage gc`: every deletion re-checks under its lock, a second run finds less."""
    from msr import gc
    from msr.maintenance import Busy

    try:
        return gc.collect(trigger="schedule").as_dict()
    except Busy as e:  # a backup is copying blobs: the next scheduled run collects
        log.warning("garbage collection skipped: %s", e)
        return {"skipped": str(e)}


@shared_task
def prune_records() -> dict:
    """Delete records past their retention (msr/retention.py); beat runs it every
    RETENTION_INTERVAL_SECONDS."""
    from msr import retention

    return retention.prune()
