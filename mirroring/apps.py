from django.apps import AppConfig


class MirroringConfig(AppConfig):
    name = "mirroring"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from mirroring import receivers  # noqa: F401  (subscribes to manifest_pushed)
