from django.apps import AppConfig


class CachesConfig(AppConfig):
    name = "caches"
    verbose_name = "Content caches"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from caches import receivers  # noqa: F401  (pre-warming on push)
