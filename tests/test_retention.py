"""Retention (msr/retention.py): what is past its age goes, in batches; what is young,
still in progress, or of a kind kept forever stays. Rows are made old by moving their
time back; each test looks only at its own rows (the database is the session's)."""

import json
import os
import subprocess
import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from caches.models import CacheMetrics, ContentCache
from mirroring.models import Job
from msr import retention
from msr.models import Event, Webhook, WebhookAttempt, WebhookDelivery
from tests.processes import MSR

DAY = timedelta(days=1)


@pytest.fixture
def mark():
    return f"retention-{uuid.uuid4().hex[:8]}"


def _event(mark, type, age_days):
    event = Event.objects.create(type=type, actor=mark, repository=f"acme/{mark}")
    Event.objects.filter(pk=event.pk).update(created_at=timezone.now() - age_days * DAY)
    return event.pk


def _job(mark, status, ended_days_ago):
    finished = timezone.now() - ended_days_ago * DAY if ended_days_ago is not None else None
    return Job.objects.create(action=Job.PROMOTE, repository=f"acme/{mark}", status=status,
                              finished_at=finished).pk


def test_old_records_go_young_and_unfinished_ones_stay(mark, personas):
    old_pull, young_pull = _event(mark, Event.PULL, 91), _event(mark, Event.PULL, 89)
    old_push = _event(mark, Event.PUSH, 400)  # audit events are kept by default
    done_old, failed_old = _job(mark, Job.DONE, 91), _job(mark, Job.FAILED, 100)
    done_young, running = _job(mark, Job.DONE, 10), _job(mark, Job.RUNNING, None)
    from accounts.models import Namespace

    hook = Webhook.objects.create(event_type=Webhook.TAG_PUSH, namespace=Namespace.objects.get(name="acme"),
                                  endpoint="http://127.0.0.1:9/hook")
    delivered = WebhookDelivery.objects.create(webhook=hook, event_type="TAG_PUSH", payload={}, status="succeeded",
                                               finished_at=timezone.now() - 31 * DAY)
    WebhookAttempt.objects.create(delivery=delivered, number=1, status_code=200)
    pending = WebhookDelivery.objects.create(webhook=hook, event_type="TAG_PUSH", payload={})
    WebhookDelivery.objects.filter(pk=pending.pk).update(created_at=timezone.now() - 60 * DAY)
    cache = ContentCache.objects.create(name=mark, url="http://127.0.0.1:9")
    old_sample = CacheMetrics.objects.create(cache=cache, at=timezone.now() - 31 * DAY).pk
    young_sample = CacheMetrics.objects.create(cache=cache, at=timezone.now() - 29 * DAY).pk
    try:
        dry = retention.prune(dry_run=True)
        assert all(dry[k] >= 1 for k in ("pull_events", "jobs", "webhook_deliveries", "cache_metrics")), dry
        assert Event.objects.filter(pk=old_pull).exists()  # a dry run deletes nothing

        counts = retention.prune()
        assert counts["audit_events"] == 0
        assert counts == {**dry, "audit_events": 0}
        assert not Event.objects.filter(pk=old_pull).exists()
        assert Event.objects.filter(pk__in=[young_pull, old_push]).count() == 2
        assert set(Job.objects.filter(repository=f"acme/{mark}").values_list("pk", flat=True)) == {done_young, running}
        assert not Job.objects.filter(pk__in=[done_old, failed_old]).exists()
        assert not WebhookDelivery.objects.filter(pk=delivered.pk).exists()
        assert not WebhookAttempt.objects.filter(delivery_id=delivered.pk).exists()
        assert WebhookDelivery.objects.filter(pk=pending.pk).exists()  # still to deliver
        assert set(CacheMetrics.objects.filter(cache=cache).values_list("pk", flat=True)) == {young_sample}
        assert old_sample not in CacheMetrics.objects.values_list("pk", flat=True)
        assert all(v == 0 for v in retention.prune().values())  # nothing left to do
    finally:
        Event.objects.filter(actor=mark).delete()
        Job.objects.filter(repository=f"acme/{mark}").delete()
        hook.delete()
        cache.delete()


def test_deletion_goes_in_batches(mark, monkeypatch):
    monkeypatch.setattr(retention, "BATCH", 7)
    for _ in range(23):
        _event(mark, Event.PULL, 200)
    assert retention.prune()["pull_events"] >= 23
    assert not Event.objects.filter(actor=mark).exists()


def test_zero_days_keeps_a_kind_and_audit_events_can_expire(mark, monkeypatch):
    monkeypatch.setitem(settings.RETENTION_DAYS, "pull_events", 0)
    monkeypatch.setitem(settings.RETENTION_DAYS, "audit_events", 365)
    pull, push = _event(mark, Event.PULL, 1000), _event(mark, Event.PUSH, 366)
    try:
        retention.prune()
        assert Event.objects.filter(pk=pull).exists()
        assert not Event.objects.filter(pk=push).exists()
    finally:
        Event.objects.filter(actor=mark).delete()


def test_the_command_and_the_schedule(mark, db_url, tmp_path):
    assert settings.CELERY_BEAT_SCHEDULE["prune-records"]["task"] == "msr.tasks.prune_records"
    old = _event(mark, Event.PULL, 120)
    try:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MSR_"))},
               "DATABASE_URL": db_url, "MSR_DATA_DIR": str(settings.DATA_DIR)}
        dry = subprocess.run([MSR, "manage", "prune", "--dry-run", "--json"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert dry.returncode == 0, dry.stderr
        assert json.loads(dry.stdout)["pull_events"] >= 1 and Event.objects.filter(pk=old).exists()
        text = subprocess.run([MSR, "manage", "prune"], env=env, capture_output=True, text=True, timeout=120)
        assert text.returncode == 0 and "pull_events" in text.stdout and "kept forever" in text.stdout
        assert not Event.objects.filter(pk=old).exists()
        bad = subprocess.run([MSR, "manage", "prune"], env={**env, "MSR_RETENTION_JOBS_DAYS": "-1"},
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode != 0 and "MSR_RETENTION_JOBS_DAYS=-1: expected 0 or more" in bad.stderr
    finally:
        Event.objects.filter(actor=mark).delete()

