from django.conf import settings
from django.db import models
from django.utils import timezone


class SystemSettings(models.Model):
    """Settings of the whole deployment that system admins change at run time (the
    environment's settings are read at start). One row, id 1; every web process and worker
    reads it through msr/readonly.py, which keeps it a second or two per process."""

    read_only = models.BooleanField(
        default=False, help_text="read-only mode: registry writes refused, pulls served, jobs that write wait")
    changed_at = models.DateTimeField(default=timezone.now)
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")

    class Meta:
        verbose_name = verbose_name_plural = "system settings"
        constraints = [models.CheckConstraint(condition=models.Q(pk=1), name="system_settings_single_row")]

    def __str__(self):
        return "system settings"
