"""Work queued on commit survives a broker that is away: a private redis-server is killed
between a push's commit and the queueing of its webhook delivery and promotion job; the
push still answers 201, and once Redis is back beat's outbox sweep publishes both."""

import os
import signal
import time

import pytest
import requests
from django.conf import settings

from tests.client import Registry
from tests.processes import MSR, Process, free_port, need, start_msr
from tests.test_webhooks import Receiver


class RedisServer:
    """A redis-server of the test's own on a fixed port (keeps nothing on disk), so it can
    be killed and started again at the same address."""

    def __init__(self, log_dir):
        need("redis-server")
        self.port, self.log_dir, self.process = free_port(), log_dir, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.process = Process(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no"], dict(os.environ),
                               self.log_dir / f"redis-{self.port}.log")
        deadline = time.monotonic() + 20
        while "Ready to accept connections" not in self.process.log():
            assert time.monotonic() < deadline and self.process.popen.poll() is None, self.process.log()
            time.sleep(0.1)

    def kill(self):
        self.process.popen.send_signal(signal.SIGKILL)
        self.process.popen.wait()
        self.process.stop()


@pytest.fixture(scope="module")
def deployment(db_url, artifacts_dir):
    logs = artifacts_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    broker = RedisServer(logs)
    broker.start()
    env = {"MSR_BROKER_URL": broker.url, "MSR_OUTBOX_SWEEP_SECONDS": "1", "MSR_OUTBOX_GRACE_SECONDS": "1",
           "MSR_MIRROR_TICK_SECONDS": "600"}
    web, url = start_msr("serve", settings.DATA_DIR, db_url, logs, extra_env=env)
    worker_env = {k: v for k, v in {**os.environ, **env, "MSR_DATA_DIR": str(settings.DATA_DIR),
                                    "DATABASE_URL": db_url}.items() if not k.startswith("DJANGO_")}
    worker = Process([MSR, "worker", "--concurrency", "1", "--beat"], worker_env, logs / "outbox-worker.log")
    deadline = time.monotonic() + 60
    while " ready." not in worker.log():
        assert time.monotonic() < deadline and worker.popen.poll() is None, worker.log()
        time.sleep(0.2)
    yield {"url": url, "broker": broker, "web": web, "worker": worker}
    worker.stop()
    web.stop()
    broker.process.stop()


def test_a_push_while_the_broker_is_away_answers_201_and_its_work_arrives_later(deployment, personas, unique):
    from mirroring.models import Job
    from msr.models import OutboxMessage, WebhookDelivery

    url, broker = deployment["url"], deployment["broker"]
    alice = Registry(url, "alice", personas["alice"].token)
    name, target = f"acme/outbox-{unique}", f"acme/outbox-{unique}-qa"
    alice.push_image(name, "v0")
    api = requests.Session()
    api.auth = ("alice", personas["alice"].password)
    receiver = Receiver(failures=0)
    hook = api.post(f"{url}/api/v0/webhooks", json={"type": "TAG_PUSH", "key": name, "endpoint": receiver.url})
    assert hook.status_code == 201, hook.text
    policy = api.post(f"{url}/api/v0/repositories/{name}/promotionPolicies", json={
        "rules": [{"field": "tag", "operator": "sw", "values": ["1."]}], "targetRepository": target,
        "tagTemplate": "%n"})
    assert policy.status_code == 201, policy.text

    broker.kill()
    digest, pushed = alice.push_image(name, "1.0", layers=(b"outbox layer " + unique.encode(),))
    assert pushed.status_code == 201, pushed.text  # the stored push's real outcome
    delivery = WebhookDelivery.objects.get(webhook_id=hook.json()["id"])
    job = Job.objects.get(policy_id=policy.json()["id"])
    kept = {(m.task, tuple(m.args)) for m in OutboxMessage.objects.all()}
    assert ("msr.tasks.deliver_webhook", (delivery.pk,)) in kept
    assert ("mirroring.tasks.run_job", (job.pk,)) in kept
    time.sleep(3)  # sweeps while the broker is still away keep the messages
    assert WebhookDelivery.objects.get(pk=delivery.pk).status == "pending" and not receiver.requests
    assert OutboxMessage.objects.filter(task="msr.tasks.deliver_webhook", args=[delivery.pk]).exists()

    broker.start()  # an empty Redis: nothing of the lost queue survived
    receiver.wait_for(1, timeout=90)
    body = receiver.requests[0][1]
    assert f'"tag":"1.0"'.encode() in body and digest.encode() in body
    deadline = time.monotonic() + 90
    while Job.objects.get(pk=job.pk).status != Job.DONE and time.monotonic() < deadline:
        time.sleep(0.2)
    assert Job.objects.get(pk=job.pk).status == Job.DONE, Job.objects.get(pk=job.pk).log
    tags = alice.request("GET", f"/v2/{target}/tags/list", scope=f"repository:{target}:pull").json()
    assert tags["tags"] == ["1.0"]
    assert WebhookDelivery.objects.get(pk=delivery.pk).status == "succeeded"
    time.sleep(1)
    assert len(receiver.requests) == 1  # delivered once
    assert not OutboxMessage.objects.filter(task="msr.tasks.deliver_webhook", args=[delivery.pk]).exists()
    assert "Traceback" not in deployment["web"].log()


def test_readyz_loads_the_broker_transport_the_worker_uses(deployment):
    ready = requests.get(f"{deployment['url']}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["checks"]["broker"]["ok"], ready.text
    deployment["broker"].kill()
    try:
        down = requests.get(f"{deployment['url']}/readyz", timeout=30)
        assert down.status_code == 503 and down.json()["failing"] == ["broker"]
    finally:
        deployment["broker"].start()
