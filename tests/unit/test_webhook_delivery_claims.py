"""deliver_webhook and duplicate messages (the outbox publishes at least once, and a worker
killed mid-attempt gets its message back at once): in-process, no receiver is reached
because no attempt is made in these cases."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.services import create_user
from msr.models import OutboxMessage, Webhook, WebhookDelivery
from msr.tasks import deliver_webhook


@pytest.fixture
def delivery(db):
    user = create_user(f"hook{uuid.uuid4().hex[:8]}", "a-long-password-here")
    webhook = Webhook.objects.create(event_type=Webhook.TAG_PUSH, namespace=user.namespace,
                                     endpoint="http://127.0.0.1:9/hook", created_by=user)
    return WebhookDelivery.objects.create(webhook=webhook, event_type=Webhook.TAG_PUSH, payload={"type": "TAG_PUSH"})


def test_a_message_for_an_attempt_already_made_is_dropped(delivery):
    WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=1)
    assert deliver_webhook(delivery.pk, 1) == "skipped"
    assert WebhookDelivery.objects.get(pk=delivery.pk).attempts == 1
    assert not OutboxMessage.objects.filter(task="msr.tasks.deliver_webhook").exists()


def test_a_message_for_a_delivery_another_worker_holds_comes_back_when_the_hold_ends(delivery):
    """The holder may have died mid-attempt: dropping the message would lose the delivery."""
    held_until = timezone.now() + timedelta(seconds=40)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(claimed_until=held_until)
    assert deliver_webhook(delivery.pk, 1) == "held"
    again = OutboxMessage.objects.get(task="msr.tasks.deliver_webhook")
    assert again.args == [delivery.pk, 1]
    assert held_until < again.available_at <= held_until + timedelta(seconds=2)
    assert WebhookDelivery.objects.get(pk=delivery.pk).attempts == 0  # nothing was sent
