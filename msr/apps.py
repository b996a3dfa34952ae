from django.apps import AppConfig


class MsrConfig(AppConfig):
    name = "msr"
    verbose_name = "Registry"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from msr import events  # noqa: F401  (connects the signal receivers)
