"""Celery tasks of the registry core."""

import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta

import requests
from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from msr import egress
from msr.crypto import decrypt
from msr.models import WebhookAttempt, WebhookDelivery

log = logging.getLogger(__name__)


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def owner_refusal(webhook, delivery) -> str:
    """Why this delivery may not go out now (empty if it may): a webhook acts for the user
    who created it, so it delivers only while that user still administers what it
    watches and may read the repository of the event."""
    from accounts.permissions import ADMIN, PULL, repository_actions
    from msr.access import administers_namespace
    from msr.services import find_repository

    owner = webhook.created_by
    if owner is None or not owner.is_active:
        return "refused: the webhook's creator no longer exists or is deactivated"
    if webhook.repository_id is not None:
        repository = webhook.repository
        if ADMIN not in repository_actions(owner, repository.namespace, repository):
            return (f"refused: {owner.username}, who created this webhook, no longer has admin "
                    f"access to {repository.full_name}")
    elif not administers_namespace(owner, webhook.namespace):
        return (f"refused: {owner.username}, who created this webhook, no longer administers "
                f"{webhook.namespace.name}")
    contents = (delivery.payload or {}).get("contents") or {}
    # Registry events name the namespace and the repository apart; job events the full name.
    name = contents.get("repository")
    if name and contents.get("namespace"):
        name = f"{contents['namespace']}/{name}"
    if isinstance(name, str) and "/" in name:
        event_repository = find_repository(name)
        if event_repository is not None and PULL not in repository_actions(
                owner, event_repository.namespace, event_repository):
            return f"refused: {owner.username}, who created this webhook, may not read {name}"
    return ""


@shared_task(acks_late=True)
def deliver_webhook(delivery_id: int, attempt: int | None = None) -> str:
    """Deliver one webhook event; `attempt` is the attempt the message is for (None:
    whichever is next).

    1. Reload the delivery; stop if it is no longer pending or the message is for an
       attempt already made (a duplicate message, or a retry after success). While
       another worker holds it (claimed_until), look again when the hold ends: that
       worker may have died mid-attempt (its message comes back at once, with
       task_reject_on_worker_lost), and dropping this message would lose the delivery.
    2. POST the payload with `X-MSR-Signature: sha256=<HMAC of the body>`.
    3. Record the attempt; a 2xx ends the delivery.
    4. Otherwise retry after WEBHOOK_RETRY_BASE_SECONDS * 2**(attempt-1), until
       WEBHOOK_MAX_ATTEMPTS attempts, then mark it failed.
    """
    delivery = WebhookDelivery.objects.select_related(
        "webhook__created_by", "webhook__namespace", "webhook__repository__namespace").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.PENDING:
        return "skipped"
    if attempt is not None and attempt != delivery.attempts + 1:
        return "skipped"  # a stale duplicate: that attempt was made
    from msr import outbox

    now = timezone.now()
    hold = now + timedelta(seconds=2 * settings.WEBHOOK_TIMEOUT_SECONDS + 30)
    claimed = WebhookDelivery.objects.filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now),
        pk=delivery.pk, status=WebhookDelivery.PENDING, attempts=delivery.attempts,
    ).update(claimed_until=hold)
    if not claimed:
        held_until = WebhookDelivery.objects.filter(
            pk=delivery.pk, status=WebhookDelivery.PENDING, attempts=delivery.attempts,
        ).values_list("claimed_until", flat=True).first()
        if held_until is None:
            return "skipped"  # the attempt was made meanwhile
        outbox.send(deliver_webhook, delivery.pk, delivery.attempts + 1,
                    countdown=max((held_until - now).total_seconds(), 0) + 1)
        return "held"
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
    refusal = owner_refusal(webhook, delivery)
    if refusal:
        error = refusal
    else:
        # The receiver's answer stays here: only its status reaches the delivery log, which
        # its readers may not own (a webhook must not be a way to read internal services).
        try:
            with egress.session() as session:
                response = session.post(webhook.endpoint, data=body, headers=headers,
                                        timeout=settings.WEBHOOK_TIMEOUT_SECONDS, allow_redirects=False)
                response.close()
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except (requests.RequestException, egress.EgressRefused) as e:
            error = egress.describe(e)
    succeeded = not error
    with transaction.atomic():
        WebhookAttempt.objects.get_or_create(
            delivery=delivery, number=number,
            defaults={"status_code": status_code, "error": error,
                      "duration_ms": int((time.monotonic() - started) * 1000)},
        )
        # Refusals are final: the policy or the owner's rights will not change by waiting.
        final = succeeded or bool(refusal) or number >= settings.WEBHOOK_MAX_ATTEMPTS
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            attempts=number,
            status=(WebhookDelivery.SUCCEEDED if succeeded
                    else WebhookDelivery.FAILED if final else WebhookDelivery.PENDING),
            finished_at=timezone.now() if final else None,
            claimed_until=None,
        )
        if not final:
            # The retry goes through the outbox too: a broker away now delays it, never loses it.
            outbox.send(deliver_webhook, delivery.pk, number + 1,
                        countdown=settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** (number - 1))
    if succeeded:
        return "delivered"
    if refusal:
        log.warning("webhook %s: delivery %s refused: %s", webhook.pk, delivery.pk, refusal)
        return "refused"
    if number >= settings.WEBHOOK_MAX_ATTEMPTS:
        log.warning("webhook %s: delivery %s failed after %d attempts", webhook.pk, delivery.pk, number)
        return "failed"
    return "retrying"


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


@shared_task
def sweep_outbox() -> dict:
    """Beat: publish again the messages the broker missed (msr/outbox.py)."""
    from msr import outbox

    return outbox.sweep()


@shared_task(acks_late=True)
def sync_directory(run_id: int | None = None) -> dict:
    """Team sync with the company directory (accounts/directory_sync.py): the run an
    administrator queued, or, from beat every MSR_LDAP_SYNC_INTERVAL, a new one. Audited."""
    from accounts import directory_sync
    from msr.events import record
    from msr.models import Event

    if run_id is None:
        queued, created = directory_sync.queue()
        if not created:
            return {"skipped": f"directory sync {queued.pk} is already {queued.status}"}
        run_id = queued.pk
    done = directory_sync.run(run_id)
    if done is None:
        return {"skipped": f"directory sync {run_id} is not waiting"}
    record(Event.ACCOUNT, done.triggered_by, detail={
        "action": "directory sync", "sync": done.pk, "status": done.status,
        "trigger": "api" if done.triggered_by else "schedule", **done.summary,
        **({"error": done.error} if done.error else {})})
    return {"sync": done.pk, "status": done.status, **done.summary}


@shared_task(acks_late=True)
def run_pruning(run_id: int) -> str:
    """Run one pruning run (msr/pruning.py). While the registry is read-only a real run
    stays waiting and is looked at again every READ_ONLY_JOB_WAIT_SECONDS."""
    from msr import outbox, pruning, readonly
    from msr.models import PruningRun

    result = pruning.execute(run_id)
    if result == "read-only":
        run = PruningRun.objects.get(pk=run_id)
        if not run.error:  # one log line per wait, not one per look
            run.append_log(f"{readonly.MESSAGE}: the run waits and starts when it ends")
            PruningRun.objects.filter(pk=run_id).update(error="waiting: the registry is in read-only mode")
        outbox.send(run_pruning, run_id, countdown=settings.READ_ONLY_JOB_WAIT_SECONDS)
    return result


@shared_task
def schedule_pruning() -> dict:
    """Beat, every PRUNING_INTERVAL_SECONDS: a real run of every enabled pruning policy."""
    from msr import pruning

    return {"runs": pruning.due_runs()}
