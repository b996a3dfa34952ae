"""Policies and webhooks act for the user who created them, with that user's rights at
the moment they act: removal from a team or an organization stops them at their next
run, with a message naming the lost right. The admins of the repository a policy writes
into see it and its jobs, and may stop it."""

import time

import requests

from tests.client import Registry


def _tags(guarded, who, name):
    response = Registry(guarded.url, who.name, who.password).request(
        "GET", f"/v2/{name}/tags/list", scope=f"repository:{name}:pull")
    return response.json().get("tags", []) if response.status_code == 200 else []


def _jobs(guarded, who, policy_id):
    return guarded.api(who.auth, "GET", "jobs", params={"policy": policy_id}).json()["results"]


def _last_job(guarded, who, policy_id, count, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        jobs = _jobs(guarded, who, policy_id)
        if len(jobs) >= count and jobs[0]["status"] not in ("waiting", "running"):
            return jobs[0]
        assert time.monotonic() < deadline, jobs
        time.sleep(0.2)


def test_a_promotion_stops_when_its_creator_leaves_the_target_organization(guarded, tenant, organization):
    from accounts.services import remove_member

    owner, member = tenant("owner"), tenant("member")
    org, _, _ = organization(owner, {"writers": ("read-write", [member], ["app"])})
    source, target = f"{member.name}/build", f"{org.name}/app"
    pusher = Registry(guarded.url, member.name, member.password)
    pusher.push_image(source, "seed")
    policy = guarded.api(member.auth, "POST", f"repositories/{source}/promotionPolicies",
                         json={"targetRepository": target, "tagTemplate": "%n"})
    assert policy.status_code == 201, policy.text
    policy_id = policy.json()["id"]
    pusher.push_image(source, "v1")
    assert _last_job(guarded, member, policy_id, 1)["status"] == "done"
    assert "v1" in _tags(guarded, owner, target)

    # The target's owner sees the policy and its jobs, though it lives on another repository.
    incoming = guarded.api(owner.auth, "GET", f"repositories/{target}/incomingPolicies").json()["results"]
    assert [(p["id"], p["sourceRepository"], p["createdBy"]) for p in incoming] == \
        [(policy_id, source, member.name)]
    assert [j["policy"] for j in _jobs(guarded, owner, policy_id)] == [policy_id]

    remove_member(org, member.user)
    pusher.push_image(source, "v2")
    job = _last_job(guarded, member, policy_id, 2)
    assert job["status"] == "failed"
    assert job["error"] == (f"refused: {member.name}, who created this policy, no longer has write access "
                            f"to {target}")
    assert "v2" not in _tags(guarded, owner, target)


def test_a_promotion_out_of_a_private_repository_stops_when_its_creator_loses_read(guarded, tenant, organization):
    from accounts.services import remove_team_member

    owner, admin = tenant("owner"), tenant("teamadmin")
    org, _, teams = organization(owner, {"admins": ("admin", [admin], ["secret"])}, repositories=("secret",))
    source, loot = f"{org.name}/secret", f"{admin.name}/loot"
    owner_client = Registry(guarded.url, owner.name, owner.password)
    owner_client.push_image(source, "seed")
    policy = guarded.api(admin.auth, "POST", f"repositories/{source}/promotionPolicies",
                         json={"targetRepository": loot, "tagTemplate": "%n"})
    assert policy.status_code == 201, policy.text
    policy_id = policy.json()["id"]
    owner_client.push_image(source, "v1", layers=(b"private bytes one",))
    assert _last_job(guarded, owner, policy_id, 1)["status"] == "done"

    remove_team_member(teams["admins"], admin.user)
    digest, _ = owner_client.push_image(source, "v2", layers=(b"private bytes two, pushed after",))
    job = _last_job(guarded, owner, policy_id, 2)
    assert job["status"] == "failed"
    assert job["error"] == f"refused: {admin.name}, who created this policy, no longer has read access to {source}"
    assert "v2" not in _tags(guarded, admin, loot)
    from msr.models import Manifest

    assert not Manifest.objects.filter(repository__namespace__name=admin.name, digest=digest).exists()
    # The one who lost access no longer sees the policy's jobs either.
    assert guarded.api(admin.auth, "GET", f"jobs/{job['id']}").status_code == 404


def test_the_target_admins_disable_a_promotion_that_writes_into_their_repository(guarded, tenant, organization):
    owner, member = tenant("owner"), tenant("member")
    org, _, _ = organization(owner, {"writers": ("read-write", [member], ["app"])})
    source, target = f"{member.name}/build", f"{org.name}/app"
    pusher = Registry(guarded.url, member.name, member.password)
    pusher.push_image(source, "seed")
    policy_id = guarded.api(member.auth, "POST", f"repositories/{source}/promotionPolicies",
                            json={"targetRepository": target}).json()["id"]
    # Somebody else may not stop it: a member without admin on the target.
    assert guarded.api(member.auth, "PATCH", f"repositories/{target}/incomingPolicies/{policy_id}",
                       json={"enabled": False}).status_code == 403
    stopped = guarded.api(owner.auth, "PATCH", f"repositories/{target}/incomingPolicies/{policy_id}",
                          json={"enabled": False})
    assert stopped.status_code == 200 and stopped.json()["enabled"] is False
    pusher.push_image(source, "v1")
    time.sleep(1)
    assert _jobs(guarded, member, policy_id) == []
    assert "v1" not in _tags(guarded, owner, target)


def test_the_target_admins_see_and_stop_an_incoming_promotion_in_the_web_ui(guarded, tenant, organization):
    import re

    owner, member = tenant("owner"), tenant("member")
    org, _, _ = organization(owner, {"writers": ("read-write", [member], ["app"])})
    source, target = f"{member.name}/build", f"{org.name}/app"
    Registry(guarded.url, member.name, member.password).push_image(source, "seed")
    policy_id = guarded.api(member.auth, "POST", f"repositories/{source}/promotionPolicies",
                            json={"targetRepository": target}).json()["id"]
    browser = requests.Session()
    page = browser.get(f"{guarded.url}/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    browser.post(f"{guarded.url}/login/", data={"username": owner.name, "password": owner.password,
                                                "csrfmiddlewaretoken": csrf}, headers={"Referer": page.url})
    policies = browser.get(f"{guarded.url}/repositories/{target}/policies/")
    assert policies.status_code == 200 and "Promotions into this repository" in policies.text
    assert source in policies.text and member.name in policies.text
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', policies.text).group(1)
    done = browser.post(f"{guarded.url}/repositories/{target}/incoming/{policy_id}/disable/",
                        data={"csrfmiddlewaretoken": csrf}, headers={"Referer": policies.url})
    assert done.status_code == 200 and f"Disabled promotion policy {policy_id}" in done.text
    from mirroring.models import Policy

    assert Policy.objects.get(pk=policy_id).enabled is False


def test_a_poll_mirror_stops_when_its_creator_loses_write_on_its_repository(guarded, fake, tenant, organization):
    from accounts.services import remove_member

    owner, admin = tenant("owner"), tenant("teamadmin")
    org, _, _ = organization(owner, {"admins": ("admin", [admin], ["mirror"])}, repositories=("mirror",))
    mirror = f"{org.name}/mirror"
    fake.serve_image("up/app", "v1", ("sha256:" + "0" * 64, 1), [])
    policy = guarded.api(admin.auth, "POST", f"repositories/{mirror}/pollMirroringPolicies",
                         json={"remoteHost": fake.url, "remoteRepository": "up/app"})
    assert policy.status_code == 201, policy.text
    remove_member(org, admin.user)
    job = guarded.api(owner.auth, "POST", "jobs", json={"action": "poll_mirror", "policy": policy.json()["id"]})
    finished = guarded.wait_job(owner.auth, job.json()["id"])
    assert finished["status"] == "failed"
    assert finished["error"] == f"refused: {admin.name}, who created this policy, no longer has write access to {mirror}"
    assert fake.requests == [("GET", "/v2/up/app/tags/list?n=1000")]  # only the check when it was saved


def test_a_webhook_stops_when_its_creator_loses_access(guarded, tenant, organization):
    from accounts.services import remove_team_member

    owner, admin = tenant("owner"), tenant("teamadmin")
    org, _, teams = organization(owner, {"admins": ("admin", [admin], ["app"])})
    name = f"{org.name}/app"
    pusher = Registry(guarded.url, owner.name, owner.password)
    pusher.push_image(name, "v0")
    hook = guarded.api(admin.auth, "POST", "webhooks", json={
        "type": "TAG_PUSH", "key": name, "endpoint": f"{guarded.receiver.url}/hook"})
    assert hook.status_code == 201, hook.text
    hook_id = hook.json()["id"]
    before = len(guarded.receiver.requests)
    pusher.push_image(name, "v1")
    assert guarded.wait_delivery(admin.auth, hook_id)["status"] == "succeeded"
    assert len(guarded.receiver.requests) == before + 1

    remove_team_member(teams["admins"], admin.user)
    # The creator no longer sees, edits or reads the deliveries of the webhook...
    assert guarded.api(admin.auth, "GET", f"webhooks/{hook_id}").status_code == 404
    assert guarded.api(admin.auth, "GET", f"webhooks/{hook_id}/deliveries").status_code == 404
    assert guarded.api(admin.auth, "PATCH", f"webhooks/{hook_id}", json={"enabled": True}).status_code == 404
    assert hook_id not in [h["id"] for h in guarded.api(admin.auth, "GET", "webhooks").json()["results"]]
    # ...and it no longer delivers: the repository's owner sees why.
    pusher.push_image(name, "v2")
    delivery = guarded.wait_delivery(owner.auth, hook_id)
    assert delivery["status"] == "failed" and delivery["payload"]["contents"]["tag"] == "v2"
    assert delivery["log"][-1]["error"] == (f"refused: {admin.name}, who created this webhook, no longer has "
                                            f"admin access to {name}")
    time.sleep(0.5)
    assert len(guarded.receiver.requests) == before + 1
