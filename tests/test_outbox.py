"""Work queued on commit survives a broker that is away: a private redis-server is killed
between a push's commit and the queueing of its webhook delivery and promotion job; the
push still answers 201, and once Redis is back beat's outbox sweep publishes both.

The deployment has its own database (tests/deployments.py), so its beat sweeps and ticks
only what this test made."""

import json
import time

import pytest

from tests.client import Registry
from tests.deployments import Deployment, wait_for
from tests.fixtures.redis import RedisServer
from tests.fixtures.webhooks import Receiver


@pytest.fixture(scope="module")
def outbox(db_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("outbox")
    (root / "logs").mkdir()
    broker = RedisServer(root / "logs")
    broker.start()
    deployment = Deployment("outbox", root, db_url, broker.url, extra_env={
        "MSR_OUTBOX_SWEEP_SECONDS": "1", "MSR_OUTBOX_GRACE_SECONDS": "1"})
    token = deployment.with_admin("team")
    deployment.start(beat=True)
    yield deployment, broker, token
    deployment.stop()
    broker.stop()


def _outbox_rows(deployment) -> set[tuple]:
    code = ("import json\nfrom msr.models import OutboxMessage\n"
            "print(json.dumps([[m.task, *m.args] for m in OutboxMessage.objects.all()]))")
    return {tuple(row) for row in json.loads(deployment.shell(code).strip().splitlines()[-1])}


def test_a_push_while_the_broker_is_away_answers_201_and_its_work_arrives_later(outbox):
    deployment, broker, token = outbox
    admin = Registry(deployment.url, "admin", token)
    admin.push_image("team/app", "v0")
    receiver = Receiver(failures=0)
    hook = deployment.api("POST", "webhooks", json={"type": "TAG_PUSH", "key": "team/app", "endpoint": receiver.url})
    assert hook.status_code == 201, hook.text
    policy = deployment.api("POST", "repositories/team/app/promotionPolicies", json={
        "rules": [{"field": "tag", "operator": "sw", "values": ["1."]}], "targetRepository": "team/app-qa",
        "tagTemplate": "%n"})
    assert policy.status_code == 201, policy.text

    broker.kill()
    digest, pushed = admin.push_image("team/app", "1.0", layers=(b"pushed while the broker is away",))
    assert pushed.status_code == 201, pushed.text  # the stored push's real outcome
    deliveries = deployment.api("GET", f"webhooks/{hook.json()['id']}/deliveries").json()["results"]
    assert [d["status"] for d in deliveries] == ["pending"]
    jobs = deployment.api("GET", f"jobs?policy={policy.json()['id']}").json()["results"]
    assert [j["status"] for j in jobs] == ["waiting"]
    time.sleep(3)  # beat's sweeps while the broker is away keep the messages
    assert _outbox_rows(deployment) == {("msr.tasks.deliver_webhook", deliveries[0]["id"], 1),
                                        ("mirroring.tasks.run_job", jobs[0]["id"])}
    assert not receiver.requests

    broker.start()  # an empty Redis: nothing of the lost queue survived
    receiver.wait_for(1, timeout=90)
    body = receiver.requests[0][1]
    assert b'"tag":"1.0"' in body and digest.encode() in body
    job = wait_for(lambda: (j := deployment.api("GET", f"jobs/{jobs[0]['id']}").json())["status"] == "done" and j,
                   timeout=90, what="the promotion job")
    assert job["status"] == "done"
    tags = admin.request("GET", "/v2/team/app-qa/tags/list", scope="repository:team/app-qa:pull").json()
    assert tags["tags"] == ["1.0"]
    delivery = deployment.api("GET", f"webhooks/{hook.json()['id']}/deliveries").json()["results"][0]
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 1
    assert len(receiver.requests) == 1  # delivered once
    assert _outbox_rows(deployment) == set()
    assert "Traceback" not in deployment.web.log()


def test_readyz_loads_the_broker_transport_the_worker_uses(outbox):
    import requests

    deployment, broker, _ = outbox
    ready = requests.get(f"{deployment.url}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["checks"]["broker"]["ok"], ready.text
    broker.kill()
    try:
        down = requests.get(f"{deployment.url}/readyz", timeout=30)
        assert down.status_code == 503 and down.json()["failing"] == ["broker"]
    finally:
        broker.start()
