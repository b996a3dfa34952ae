from msr.models.events import Event
from msr.models.outbox import OutboxMessage
from msr.models.pruning import PruningPolicy, PruningRun
from msr.models.settings import SystemSettings
from msr.models.registry import Blob, Manifest, Repository, RepositoryBlob, StorageLease, Tag, Upload
from msr.models.webhooks import Webhook, WebhookAttempt, WebhookDelivery

__all__ = [
    "Blob", "Event", "Manifest", "OutboxMessage", "PruningPolicy", "PruningRun", "Repository", "RepositoryBlob", "StorageLease", "SystemSettings", "Tag", "Upload",
    "Webhook", "WebhookAttempt", "WebhookDelivery",
]
