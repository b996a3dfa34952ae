"""Promotion and mirroring across three real MSR deployments (dev, qa, prod), each with
its own database, storage, port, Redis broker and Celery worker with beat; images moved
by policies and checked with skopeo.

dev:  the developer `dana` has read-write on the organization `team`. A promotion policy
      on team/app turns `1.4` into `1.4-rc`; a push mirror carries `*-rc` tags to qa.
qa:   dana has read-only on team/app; `mirror` (read-write) is the push mirror's identity.
prod: dana has no access; a poll mirror fetches `*-rc` from qa as `reader` (read-only).
"""

import json
import os
import time

import pytest
import requests

from tests.deployments import Deployment, wait_for
from tests.images import make_image_layout
from tests.processes import have, run

REDIS = os.environ.get("MSR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
REQUIRE = os.environ.get("MSR_REQUIRE_CLIENTS") == "1"

SETUP = """
from accounts.models import AccessToken
from accounts.services import add_team_member, create_organization, create_team, create_user, set_team_access
from msr.models import Repository
admin = create_user("admin", "admin-password", is_admin=True)
dana = create_user("dana", "dana-password")
team = create_organization("team", owner=admin)
app = Repository.objects.create(namespace=team, name="app")
{extra}
"""
DEV = """
devs = create_team(team, "devs"); add_team_member(devs, dana); set_team_access(devs, team, "read-write")
"""
QA = """
mirror = create_user("mirror", "mirror-password")
readers = create_team(team, "readers"); add_team_member(readers, dana); set_team_access(readers, app, "read-only")
reader = create_user("reader", "reader-password"); add_team_member(readers, reader)
writers = create_team(team, "writers"); add_team_member(writers, mirror); set_team_access(writers, app, "read-write")
print("MIRROR", AccessToken.issue(mirror, name="push mirror from dev")[1])
print("READER", AccessToken.issue(reader, name="poll mirror from prod")[1])
"""


def redis_db(n: int) -> str:
    base, _, _ = REDIS.rpartition("/")
    return f"{base}/{n}"


@pytest.fixture(scope="module")
def deployments(db_url, tmp_path_factory):
    import redis

    root = tmp_path_factory.mktemp("deployments")
    made = {}
    try:
        for i, name in enumerate(("dev", "qa", "prod")):
            redis.Redis.from_url(redis_db(12 + i)).flushdb()
            made[name] = Deployment(name, root / name, db_url, redis_db(12 + i))
        migrations = [d.migrate_async() for d in made.values()]
        for process in migrations:
            out, _ = process.communicate(timeout=300)
            assert process.returncode == 0, out
        made["dev"].shell(SETUP.format(extra=DEV))
        secrets = dict(line.split(" ", 1) for line in made["qa"].shell(SETUP.format(extra=QA)).split("\n")
                       if line.startswith(("MIRROR ", "READER ")))
        made["prod"].shell(SETUP.format(extra=""))
        for d in made.values():
            d.start_web()
        made["dev"].start_worker()
        made["prod"].start_worker()
        made["secrets"] = secrets
        yield made
    finally:
        for d in made.values():
            if isinstance(d, Deployment):
                d.stop()


def host(url: str) -> str:
    return url.removeprefix("http://")


def skopeo(*args, check=True):
    if not have("skopeo"):
        if REQUIRE:
            pytest.fail("skopeo is not installed (MSR_REQUIRE_CLIENTS=1)")
        pytest.skip("skopeo is not installed")
    return run(["skopeo", *args], check=check)


def tag_digest(deployment: Deployment, name: str, tag: str) -> str | None:
    response = deployment.api("GET", f"repositories/{name}/tags/{tag}")
    return response.json()["digest"] if response.status_code == 200 else None


def job_of(deployment: Deployment, policy_id: int, status="done") -> dict | None:
    jobs = deployment.api("GET", f"jobs?policy={policy_id}").json()["results"]
    finished = [j for j in jobs if j["status"] == status]
    return finished[0] if finished else None


def test_dev_to_qa_to_prod_by_promotion_push_mirror_and_poll_mirror(deployments, tmp_path):
    dev, qa, prod = deployments["dev"], deployments["qa"], deployments["prod"]
    secrets = deployments["secrets"]

    promotion = dev.api("POST", "repositories/team/app/promotionPolicies", json={
        "enabled": True, "rules": [{"field": "tag", "operator": "matches", "values": [r"^\d+\.\d+$"]}],
        "targetRepository": "team/app", "tagTemplate": "%n-rc"})
    assert promotion.status_code == 201, promotion.text
    push = dev.api("POST", "repositories/team/app/pushMirroringPolicies", json={
        "enabled": True, "rules": [{"field": "tag", "operator": "ew", "values": ["-rc"]}],
        "remoteHost": qa.url, "remoteRepository": "team/app", "username": "mirror",
        "authToken": secrets["MIRROR"], "tagTemplate": "%n"})
    assert push.status_code == 201, push.text
    assert "authToken" not in push.json() and "password" not in push.json() and push.json()["hasCredentials"]
    poll = prod.api("POST", "repositories/team/app/pollMirroringPolicies", json={
        "enabled": True, "rules": [{"field": "tag", "operator": "ew", "values": ["-rc"]}],
        "remoteHost": qa.url, "remoteRepository": "team/app", "username": "reader",
        "authToken": secrets["READER"], "interval": 10})
    assert poll.status_code == 201, poll.text

    layout = tmp_path / "image"
    pushed = make_image_layout(layout, layer_sizes=(300_000, 200_000, 100_000), tag="1.4")
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "dana:dana-password",
           f"oci:{layout}:1.4", f"docker://{host(dev.url)}/team/app:1.4")

    # dev: the promotion linked 1.4 as 1.4-rc (no bytes moved); qa got it by push mirror;
    # prod polled it from qa on its schedule.
    wait_for(lambda: tag_digest(dev, "team/app", "1.4-rc"), what="promotion in dev")
    wait_for(lambda: tag_digest(qa, "team/app", "1.4-rc"), timeout=90, what="push mirror to qa")
    wait_for(lambda: tag_digest(prod, "team/app", "1.4-rc"), timeout=90, what="poll mirror into prod")
    digests = {d.name: tag_digest(d, "team/app", "1.4-rc") for d in (dev, qa, prod)}
    assert set(digests.values()) == {pushed}, digests
    assert tag_digest(qa, "team/app", "1.4") is None  # only what the rules let through

    promoted = job_of(dev, promotion.json()["id"])
    assert promoted["bytesTotal"] == 0 and promoted["results"] == [
        {"tag": "1.4", "targetTag": "1.4-rc", "digest": pushed, "target": "team/app"}]
    mirrored = wait_for(lambda: job_of(dev, push.json()["id"]), what="push job done")
    assert mirrored["bytesDone"] == mirrored["bytesTotal"] > 600_000 and mirrored["progress"] == 1.0
    detail = dev.api("GET", f"jobs/{mirrored['id']}").json()
    assert f"team/app:1.4-rc = {pushed} (verified)" in detail["log"]
    assert secrets["MIRROR"] not in detail["log"]
    polled = wait_for(lambda: job_of(prod, poll.json()["id"]), what="poll job done")
    assert polled["results"][0]["digest"] == pushed

    # The developer: pulls from qa, cannot push to qa, cannot pull from prod.
    back = tmp_path / "from-qa"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", "dana:dana-password",
           f"docker://{host(qa.url)}/team/app:1.4-rc", f"oci:{back}:x")
    assert json.loads((back / "index.json").read_text())["manifests"][0]["digest"] == pushed
    refused = skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "dana:dana-password",
                     f"oci:{layout}:1.4", f"docker://{host(qa.url)}/team/app:dana", check=False)
    assert refused.returncode != 0 and tag_digest(qa, "team/app", "dana") is None
    refused = skopeo("copy", "--src-tls-verify=false", "--src-creds", "dana:dana-password",
                     f"docker://{host(prod.url)}/team/app:1.4-rc", f"oci:{tmp_path / 'prod'}:x", check=False)
    assert refused.returncode != 0
    assert "denied" in refused.stderr.lower() or "unauthorized" in refused.stderr.lower() \
        or "not found" in refused.stderr.lower(), refused.stderr
