from django.apps import AppConfig


class MirroringConfig(AppConfig):
    name = "mirroring"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from mirroring import receivers  # noqa: F401  (subscribes to manifest_pushed)
        from mirroring.metrics import JobCollector
        from mirroring.models import Job
        from msr import extensions

        extensions.metric_collectors.append(JobCollector())
        extensions.retention_kinds["jobs"] = lambda cutoff: Job.objects.exclude(status__in=Job.ACTIVE).filter(
            finished_at__lt=cutoff)
        extensions.encrypted_fields.append(("mirroring.Policy", "secret_encrypted"))
        extensions.tag_protectors.append(promoted_tags)


def promoted_tags(repository) -> dict[str, str]:
    """Tags of `repository` that an enabled promotion policy put there and that still
    point at what it promoted: pruning keeps them (the policy's result is wanted)."""
    from mirroring.models import Job, Policy

    enabled = set(Policy.objects.filter(kind=Policy.PROMOTION, enabled=True,
                                        target_repository=repository.full_name).values_list("pk", flat=True))
    if not enabled:
        return {}
    current = dict(repository.tags.values_list("name", "manifest__digest"))
    protected = {}
    for policy_id, results in Job.objects.filter(policy_id__in=enabled, action=Job.PROMOTE, status=Job.DONE,
                                                 target=repository.full_name).values_list("policy_id", "results"):
        for result in results or []:
            tag, digest = result.get("targetTag") or result.get("tag"), result.get("digest")
            if tag in current and current[tag] == digest:
                protected[tag] = f"target of the enabled promotion policy {policy_id}"
    return protected
