"""A push (or a promotion's result) starts the promotion and push mirroring policies of
its repository whose rules match the tag: jobs written in the push's transaction."""

import logging

from django.conf import settings
from django.dispatch import receiver

from mirroring import criteria
from mirroring.jobs import create_job
from mirroring.models import Policy
from msr import signals

log = logging.getLogger(__name__)


@receiver(signals.manifest_pushed)
def start_policies(sender, repository, manifest, tag, user, depth=0, **kwargs):
    if not tag:
        return
    policies = Policy.objects.filter(repository=repository, enabled=True,
                                     kind__in=(Policy.PROMOTION, Policy.PUSH_MIRROR))
    for policy in policies:
        if not criteria.matches(policy.rules, tag):
            continue
        if policy.kind == Policy.PROMOTION and depth >= settings.MIRROR_MAX_PROMOTION_CHAIN:
            log.warning("promotion policy %s not run for %s:%s: %d promotions in a row (a loop?)",
                        policy.pk, repository, tag, depth)
            continue
        policy.repository = repository
        create_job(policy, tag=tag, digest=manifest.digest, depth=depth,
                   triggered_by=f"{'promotion' if depth else 'push'} of {repository}:{tag}"
                                f"{' by ' + user.username if user else ''}")
