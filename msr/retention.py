"""Retention: records that only grow are pruned by age.

| kind               | what goes                                          | setting (days)                          | default |
|--------------------|----------------------------------------------------|-----------------------------------------|---------|
| pull_events        | audit rows of pulls (one per manifest GET)         | MSR_RETENTION_PULL_EVENTS_DAYS          | 90      |
| audit_events       | every other audit row (pushes, deletes, logins…)   | MSR_RETENTION_AUDIT_EVENTS_DAYS         | 0: kept |
| jobs               | mirroring/promotion jobs that ended, by end time   | MSR_RETENTION_JOBS_DAYS                 | 90      |
| webhook_deliveries | deliveries that ended (with their attempts)        | MSR_RETENTION_WEBHOOK_DELIVERIES_DAYS   | 30      |
| cache_metrics      | cache nodes' counter samples (the console's chart) | MSR_RETENTION_CACHE_METRICS_DAYS        | 30      |
| expired_sessions   | web sessions past their expiry                     | (always)                                |         |
| auth_throttle      | failed sign-in counters whose window and block are over, addresses unused for 30 days | (always) | |

0 days keeps that kind forever. Nothing that is still in progress goes (a waiting or
running job, a pending delivery). Deletion runs in batches of BATCH rows, each its own
short transaction, so a first prune of millions of pull rows does not hold a long lock
or one huge transaction. Beat runs `msr.tasks.prune_records` every
MSR_RETENTION_INTERVAL seconds (3600; 0: off); `msr manage prune [--dry-run] [--json]`
runs it by hand.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

log = logging.getLogger(__name__)

BATCH = 5000


def _querysets(now) -> dict:
    from accounts import throttle
    from accounts.models import UserSession
    from msr import extensions
    from msr.models import Event, WebhookDelivery

    def cutoff(kind):
        days = settings.RETENTION_DAYS[kind]
        return now - timedelta(days=days) if days else None

    kinds = {
        "pull_events": lambda c: Event.objects.filter(type=Event.PULL, created_at__lt=c),
        "audit_events": lambda c: Event.objects.exclude(type=Event.PULL).filter(created_at__lt=c),
        "webhook_deliveries": lambda c: WebhookDelivery.objects.exclude(
            status=WebhookDelivery.PENDING).filter(finished_at__lt=c),
        **extensions.retention_kinds,  # jobs (mirroring), cache_metrics (caches)
    }
    found = {kind: make(cutoff(kind)) for kind, make in kinds.items() if cutoff(kind) is not None}
    found["expired_sessions"] = UserSession.objects.filter(expire_date__lt=now)
    found["auth_throttle"] = throttle.expired(now)
    return found


def prune(dry_run: bool = False) -> dict[str, int]:
    """Delete (or, dry, count) what is past its retention; rows per kind."""
    counts = {kind: 0 for kind in [*settings.RETENTION_DAYS, "expired_sessions", "auth_throttle"]}
    for kind, queryset in _querysets(timezone.now()).items():
        if dry_run:
            counts[kind] = queryset.count()
            continue
        while True:
            with transaction.atomic():
                pks = list(queryset.values_list("pk", flat=True)[:BATCH])
                if pks:
                    queryset.model.objects.filter(pk__in=pks).delete()
            counts[kind] += len(pks)
            if len(pks) < BATCH:
                break
    if any(counts.values()):
        log.info("retention%s: %s", " (dry run)" if dry_run else "", counts)
    return counts
