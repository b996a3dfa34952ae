"""Pre-warming policies: a matching push queues one prewarm task per cache, after the
push commits."""

from django.dispatch import receiver

from caches.models import PrewarmPolicy
from msr import signals


@receiver(signals.manifest_pushed)
def prewarm_on_push(sender, repository, manifest, tag, user, **kwargs):
    if not tag:
        return
    from caches.tasks import prewarm
    from msr import outbox

    for policy in PrewarmPolicy.objects.filter(enabled=True, namespace=repository.namespace.name):
        if policy.matches(repository.full_name, tag):
            for cache in policy.caches.filter(enabled=True):
                outbox.send(prewarm, cache.pk, repository.full_name, tag)
