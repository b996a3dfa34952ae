from django.apps import AppConfig


class CachesConfig(AppConfig):
    name = "caches"
    verbose_name = "Content caches"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from caches import receivers  # noqa: F401  (pre-warming on push)
        from caches.models import CacheMetrics
        from caches.choice import CACHE_CHOICE
        from msr import extensions

        extensions.retention_kinds["cache_metrics"] = lambda cutoff: CacheMetrics.objects.filter(at__lt=cutoff)
        extensions.account_settings.append(CACHE_CHOICE)
