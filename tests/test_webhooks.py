"""Webhook delivery with a real Celery worker on the Redis broker and a real HTTP
receiver on 127.0.0.1."""

import hashlib
import hmac
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
import requests
from django.conf import settings

from tests.client import Registry
from tests.processes import MSR, Process, start_msr

MAX_ATTEMPTS = 4
REDIS_URL = os.environ.get("MSR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


class Receiver:
    """An HTTP endpoint that fails the first `failures` requests with a 500."""

    def __init__(self, failures: int):
        self.requests: list[tuple[dict, bytes]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                failing = len(receiver.requests) <= receiver.failures
                self.send_response(500 if failing else 200)
                self.end_headers()
                self.wfile.write(b"try again" if failing else b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout=60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(self.requests) >= count, f"got {len(self.requests)} of {count} requests"


@pytest.fixture(scope="module")
def msr_on_redis(db_url, artifacts_dir):
    """An MSR web process and a Celery worker (prefork) sharing a Redis broker."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {"MSR_BROKER_URL": REDIS_URL, "MSR_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
           "MSR_WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS)}
    web, url = start_msr("serve", settings.DATA_DIR, db_url, artifacts_dir / "logs", extra_env=env)
    worker_env = {**os.environ, **env, "MSR_DATA_DIR": str(settings.DATA_DIR), "DATABASE_URL": db_url}
    worker_env = {k: v for k, v in worker_env.items() if not k.startswith("DJANGO_")}
    worker = Process([MSR, "worker", "--concurrency", "1"], worker_env, artifacts_dir / "logs" / "worker.log")
    deadline = time.monotonic() + 60
    while " ready." not in worker.log():
        assert time.monotonic() < deadline and worker.popen.poll() is None, worker.log()
        time.sleep(0.2)
    yield url
    worker.stop()
    web.stop()


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
