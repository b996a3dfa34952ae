from msr.models.events import Event
from msr.models.registry import Blob, Manifest, Repository, RepositoryBlob, Tag, Upload
from msr.models.webhooks import Webhook, WebhookAttempt, WebhookDelivery

__all__ = [
    "Blob", "Event", "Manifest", "Repository", "RepositoryBlob", "Tag", "Upload",
    "Webhook", "WebhookAttempt", "WebhookDelivery",
]
