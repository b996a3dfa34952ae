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
