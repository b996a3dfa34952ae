"""Webhook delivery with a real Celery worker on the Redis broker and a real HTTP
receiver on 127.0.0.1."""

import hashlib
import hmac
import json
import time

import requests

from tests.client import Registry
from tests.fixtures.webhooks import MAX_ATTEMPTS, Receiver, msr_on_redis  # noqa: F401  (fixture)


def test_a_push_is_delivered_signed_and_retried_until_the_receiver_accepts(msr_on_redis, personas, unique):
    receiver = Receiver(failures=2)
    name = f"acme/hooked-{unique}"
    alice = Registry(msr_on_redis, "alice", personas["alice"].token)
    alice.push_image(name, "v0")  # the repository exists before the subscription
    api = requests.Session()
    api.auth = ("alice", personas["alice"].token)
    hook = api.post(f"{msr_on_redis}/api/v0/webhooks", json={
        "type": "TAG_PUSH", "key": name, "endpoint": receiver.url, "secret": "hook-secret"}).json()

    digest, _ = alice.push_image(name, "v1")
    receiver.wait_for(3)
    time.sleep(0.5)
    assert len(receiver.requests) == 3  # no fourth after the success
    for headers, body in receiver.requests:
        expected = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
        assert headers["X-MSR-Signature"] == expected
        assert headers["X-MSR-Event"] == "TAG_PUSH"
    payload = json.loads(receiver.requests[-1][1])
    assert payload["type"] == "TAG_PUSH" and "createdAt" in payload
    assert payload["contents"]["tag"] == "v1" and payload["contents"]["digest"] == digest
    assert payload["contents"]["imageName"] == f"{name}:v1" and payload["contents"]["author"] == "alice"

    deadline = time.monotonic() + 10
    while True:
        delivery = api.get(f"{msr_on_redis}/api/v0/webhooks/{hook['id']}/deliveries").json()["results"][0]
        if delivery["status"] != "pending" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 3
    assert [a["statusCode"] for a in delivery["log"]] == [500, 500, 200]
    assert delivery["log"][0]["error"].startswith("HTTP 500")


def test_a_delivery_that_never_succeeds_is_marked_failed(msr_on_redis, personas, unique):
    from msr.models import WebhookDelivery

    receiver = Receiver(failures=100)
    api = requests.Session()
    api.auth = ("alice", personas["alice"].token)
    hook = api.post(f"{msr_on_redis}/api/v0/webhooks", json={
        "type": "TAG_PUSH", "key": "acme/public-app", "endpoint": receiver.url}).json()
    delivery = api.post(f"{msr_on_redis}/api/v0/webhooks/{hook['id']}/test").json()
    receiver.wait_for(MAX_ATTEMPTS, timeout=90)
    deadline = time.monotonic() + 10
    while WebhookDelivery.objects.get(pk=delivery["id"]).status == "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
    final = WebhookDelivery.objects.get(pk=delivery["id"])
    assert final.status == "failed" and final.attempts == MAX_ATTEMPTS
    assert "X-MSR-Signature" not in receiver.requests[0][0]  # no secret, no signature
