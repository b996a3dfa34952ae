"""Work queued when a transaction commits, never lost and never a failed request.

`send(task, *args)` inside a transaction writes an OutboxMessage row with the change; when
the transaction commits the message is published and the row deleted. When the broker is
away at that moment the request still answers with its own outcome (a stored push is a
201): the failure is logged, the row stays, and beat's `msr.tasks.sweep_outbox` publishes
it once the broker is back. Tasks are idempotent (they reload their rows and check their
state), so a message published twice does no harm.
"""

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from msr.models import OutboxMessage

log = logging.getLogger(__name__)

# After a failed publication this process leaves the broker alone for a few seconds: during
# an outage each request would otherwise wait out the publish retries for every message.
BACKOFF_SECONDS = 5.0
_broker_away_until = 0.0


def send(task, *args, countdown: float = 0) -> None:
    """Queue `task(*args)` when the current transaction commits (at once outside one)."""
    available_at = timezone.now() + timedelta(seconds=countdown)
    row = OutboxMessage.objects.create(task=task.name, args=list(args), available_at=available_at)
    transaction.on_commit(lambda: publish(row), robust=True)


def publish(row: OutboxMessage, force: bool = False) -> bool:
    """Hand one message to the broker; True when it took it (and the row is gone)."""
    global _broker_away_until
    from celery import current_app as app

    if not force and time.monotonic() < _broker_away_until:
        log.info("broker unavailable a moment ago, %s kept in the outbox for the sweep", row)
        return False
    countdown = max(0.0, (row.available_at - timezone.now()).total_seconds())
    try:
        app.tasks[row.task].apply_async(args=row.args, countdown=countdown or None)
    except Exception as e:  # the broker is away: the row stays for the sweep
        error = f"{type(e).__name__}: {e}"[:300]
        _broker_away_until = time.monotonic() + BACKOFF_SECONDS
        OutboxMessage.objects.filter(pk=row.pk).update(attempts=row.attempts + 1, last_error=error)
        log.warning("broker unavailable, %s kept in the outbox for the sweep: %s", row, error)
        return False
    OutboxMessage.objects.filter(pk=row.pk).delete()
    return True


def sweep(limit: int = 500) -> dict:
    """Publish the messages whose publication on commit failed (or never ran: the process
    died between commit and publish). Only rows older than OUTBOX_GRACE_SECONDS, so a
    message being published on commit right now is not sent twice."""
    due = timezone.now() - timedelta(seconds=settings.OUTBOX_GRACE_SECONDS)
    rows = list(OutboxMessage.objects.filter(available_at__lte=due, created_at__lte=due)
                .order_by("available_at")[:limit])
    published = failed = 0
    for row in rows:
        if publish(row, force=True):
            published += 1
        else:
            failed += 1
            break  # the broker is still away: the next sweep tries again
    if published:
        log.info("outbox sweep: %d message(s) published again", published)
    return {"published": published, "failed": failed,
            "left": OutboxMessage.objects.count() if failed else 0}
