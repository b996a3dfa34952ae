from django.db import models
from django.utils import timezone


class OutboxMessage(models.Model):
    """A task message written in the transaction of the change that needs it (msr/outbox.py).
    Published when the transaction commits and deleted once the broker took it; a row that
    is still here later means the broker was away, and beat's sweep publishes it again."""

    task = models.CharField(max_length=200)
    args = models.JSONField(default=list)
    # Not before this time (a retry's countdown).
    available_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)  # publications that failed
    last_error = models.CharField(max_length=300, blank=True)

    class Meta:
        indexes = [models.Index(fields=["available_at"], name="outbox_available_idx")]

    def __str__(self):
        return f"{self.task}{tuple(self.args)}"
