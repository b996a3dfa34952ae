"""The audit trail (`Event` rows) and what turns registry changes into webhook
deliveries.

Pushes, deletes, logins and permission changes are written in the transaction of the
change. Pulls are many and small: they are buffered in the process and written in
batches by a background thread (at most a second late; lost only if the process dies
within that second), so that auditing does not halve the manifest GET rate.
"""

import logging
import queue
import threading
import time

from django.db import close_old_connections, connection, transaction
from django.dispatch import receiver
from django.utils import timezone

from msr import signals
from msr.addresses import client_address
from msr.models import Event, Tag, Webhook, WebhookDelivery

log = logging.getLogger(__name__)


def client_ip(request) -> str | None:
    return client_address(request.META) if request is not None else None


def record(type, actor="", repository="", tag="", digest="", detail=None, request=None) -> Event:
    return Event.objects.create(
        type=type, actor=actor or "", repository=repository, tag=tag or "", digest=digest or "",
        detail=detail or {}, client_ip=client_ip(request),
    )


class _PullRecorder:
    """Pull events queued by request threads (a tuple each: no model instance) and
    written by one thread with a single executemany every FLUSH_SECONDS, so the writes
    hold the GIL and the database only briefly."""

    FLUSH_SECONDS = 0.25
    COLUMNS = ("type", "actor", "repository", "tag", "digest", "detail", "client_ip", "created_at")

    def __init__(self, capacity=100_000):
        self._queue: queue.Queue[tuple] = queue.Queue(maxsize=capacity)
        self._thread = None
        self._lock = threading.Lock()

    def add(self, row: tuple) -> None:
        self._start()
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            log.warning("pull audit buffer full: a pull event was dropped")

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="msr-pull-audit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            time.sleep(self.FLUSH_SECONDS)
            while len(batch) < 5000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self.flush(batch)

    def flush(self, batch) -> None:
        try:
            close_old_connections()
            ops = connection.ops
            sql = "INSERT INTO {} ({}) VALUES ({})".format(
                ops.quote_name(Event._meta.db_table), ", ".join(ops.quote_name(c) for c in self.COLUMNS),
                ", ".join(["%s"] * len(self.COLUMNS)))
            rows = [(*row[:-1], ops.adapt_datetimefield_value(row[-1])) for row in batch]
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(sql, rows)
                _record_tag_pulls(batch)
        except Exception:  # the audit must never take the registry down
            log.exception("could not write %d pull events", len(batch))
            connection.close()


def _record_tag_pulls(batch) -> None:
    """Tags' last pull times (for pruning's `last_pulled` rule), in the flush of the pull
    events: at most one UPDATE per pulled tag and batch. A pull by tag counts for that
    tag; a pull by digest counts for no tag (clients resolve a tag first, and an image's
    layers or an index's children are pulled by digest without meaning every tag on
    them)."""
    latest: dict[tuple[str, str], object] = {}
    for row in batch:
        repository, tag, at = row[2], row[3], row[-1]
        if tag:
            latest[(repository, tag)] = max(at, latest.get((repository, tag), at))
    for (repository, tag), at in latest.items():
        namespace, _, name = repository.partition("/")
        Tag.objects.filter(repository__namespace__name=namespace, repository__name=name, name=tag).update(
            last_pulled_at=at)


_pulls = _PullRecorder()


def record_pull(actor: str, repository: str, reference: str, digest: str, request=None) -> None:
    tag = "" if ":" in reference else reference
    _pulls.add((Event.PULL, actor, repository, tag, digest, "{}", client_ip(request), timezone.now()))


# -- registry changes → audit and webhook deliveries -------------------------------------


def _subscribers(repository, event_type):
    from django.db.models import Q

    return Webhook.objects.filter(
        Q(repository=repository) | Q(repository__isnull=True, namespace_id=repository.namespace_id),
        event_type=event_type, enabled=True,
    )


def enqueue_deliveries(repository, event_type: str, contents: dict) -> list[int]:
    """Write one delivery per matching webhook (in the caller's transaction) and queue
    them once it commits."""
    payload = {"type": event_type, "createdAt": timezone.now().isoformat(), "contents": contents}
    ids = [
        WebhookDelivery.objects.create(webhook=webhook, event_type=event_type, payload=payload).pk
        for webhook in _subscribers(repository, event_type)
    ]
    if ids:
        from msr import outbox
        from msr.tasks import deliver_webhook

        for delivery_id in ids:
            outbox.send(deliver_webhook, delivery_id, 1)
    return ids


@receiver(signals.manifest_pushed)
def on_manifest_pushed(sender, repository, manifest, tag, user, **kwargs):
    actor = user.username if user else ""
    record(Event.PUSH, actor, repository.full_name, tag or "", manifest.digest,
           {"mediaType": manifest.media_type})
    base = {"namespace": repository.namespace.name, "repository": repository.name,
            "digest": manifest.digest, "mediaType": manifest.media_type, "author": actor,
            "pushedAt": timezone.now().isoformat()}
    enqueue_deliveries(repository, Webhook.MANIFEST_PUSH,
                       {**base, "imageName": f"{repository.full_name}@{manifest.digest}"})
    if tag:
        enqueue_deliveries(repository, Webhook.TAG_PUSH,
                           {**base, "tag": tag, "imageName": f"{repository.full_name}:{tag}"})


@receiver(signals.manifest_deleted)
def on_manifest_deleted(sender, repository, digest, tag, user, reason=None, also_notify=(), actor="",
                        **kwargs):
    """`also_notify`: webhook types sent besides TAG_DELETE (TAG_PRUNED for pruning);
    `actor`: who to name when no user acts (a pruning run's trigger)."""
    actor = user.username if user else actor
    record(Event.DELETE, actor, repository.full_name, tag or "", digest or "", reason)
    base = {"namespace": repository.namespace.name, "repository": repository.name, "author": actor,
            "deletedAt": timezone.now().isoformat(), **(reason or {})}
    if tag:
        contents = {**base, "tag": tag, "imageName": f"{repository.full_name}:{tag}",
                    **({"digest": digest} if digest else {})}
        for event_type in (Webhook.TAG_DELETE, *also_notify):
            enqueue_deliveries(repository, event_type, contents)
    else:
        enqueue_deliveries(repository, Webhook.MANIFEST_DELETE,
                           {**base, "digest": digest, "imageName": f"{repository.full_name}@{digest}"})
