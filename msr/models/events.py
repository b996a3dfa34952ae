from django.db import models
from django.utils import timezone


class Event(models.Model):
    """One entry of the audit trail: who did what to which repository, and when.

    Names are copied, not linked, so the trail outlives deleted users and repositories.
    """

    PUSH, PULL, DELETE, LOGIN, PERMISSION, REPOSITORY, ACCOUNT, GC, SETTINGS = (
        "push", "pull", "delete", "login", "permission", "repository", "account", "gc", "settings")
    TYPES = [(t, t) for t in (PUSH, PULL, DELETE, LOGIN, PERMISSION, REPOSITORY, ACCOUNT, GC, SETTINGS)]

    type = models.CharField(max_length=20, choices=TYPES)
    actor = models.CharField(max_length=150, blank=True, help_text="username; empty for anonymous")
    repository = models.CharField(max_length=255, blank=True)
    tag = models.CharField(max_length=128, blank=True)
    digest = models.CharField(max_length=150, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        indexes = [
            models.Index(fields=["repository", "-created_at"], name="event_repository_idx"),
            models.Index(fields=["actor", "-created_at"], name="event_actor_idx"),
            models.Index(fields=["type", "-created_at"], name="event_type_idx"),
        ]

    def __str__(self):
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor or 'anonymous'} {self.type} {self.repository}"
