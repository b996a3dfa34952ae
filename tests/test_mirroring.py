"""Promotion and mirroring across three real MSR deployments (dev, qa, prod), each with
its own database, storage, port, Redis broker and Celery worker with beat; images moved
by policies and checked with skopeo.

dev:  the developer `dana` has read-write on the organization `team`. A promotion policy
      on team/app turns `1.4` into `1.4-rc`; a push mirror carries `*-rc` tags to qa.
qa:   dana has read-only on team/app; `mirror` (read-write on the organization) is the
      push mirror's identity. qa keeps its blobs in an S3 bucket (moto's S3 emulator):
      mirrors upload into it as multipart uploads, and pulls and polls from qa follow
      presigned redirects into the bucket.
prod: dana has no access; a poll mirror fetches `*-rc` from qa as `reader` (read-only).
"""

import json
import os
import re
import time
from functools import partial

import pytest
import requests

from tests.deployments import Deployment, wait_for
from tests.images import make_image_layout
from tests.processes import need, run, side_by_side

REDIS = os.environ.get("MSR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")

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
writers = create_team(team, "writers"); add_team_member(writers, mirror); set_team_access(writers, team, "read-write")
print("MIRROR", AccessToken.issue(mirror, name="push mirror from dev")[1])
print("READER", AccessToken.issue(reader, name="poll mirror from prod")[1])
"""


def redis_db(n: int) -> str:
    base, _, _ = REDIS.rpartition("/")
    return f"{base}/{n}"


@pytest.fixture(scope="module")
def deployments(db_url, tmp_path_factory, s3_emulator):
    import redis

    root = tmp_path_factory.mktemp("deployments")
    made = {}
    emulator = s3_emulator
    try:
        for i, name in enumerate(("dev", "qa", "prod")):
            redis.Redis.from_url(redis_db(12 + i)).flushdb()
            # dev uploads blobs above 1 MB in chunks (PATCH with Content-Range), so the
            # 3 MB layers of the fault tests take the chunked path
            extra = {"MSR_MIRROR_CHUNK_BYTES": "1000000"} if name == "dev" else {}
            if name == "qa":
                bucket = emulator.bucket()
                extra = emulator.env(bucket)
            made[name] = Deployment(name, root / name, db_url, redis_db(12 + i), extra_env=extra)
        migrations = [d.migrate_async() for d in made.values()]
        for process in migrations:
            out, _ = process.communicate(timeout=300)
            assert process.returncode == 0, out
        extras = {"dev": DEV, "qa": QA, "prod": ""}
        _, qa_out, _ = side_by_side(*(partial(made[name].shell, SETUP.format(extra=extra))
                                      for name, extra in extras.items()))
        secrets = dict(line.split(" ", 1) for line in qa_out.split("\n") if line.startswith(("MIRROR ", "READER ")))
        side_by_side(made["dev"].start, made["qa"].start_web, made["prod"].start)
        made["secrets"] = secrets
        made["s3"], made["bucket"] = emulator, bucket
        yield made
    finally:
        side_by_side(*(d.stop for d in made.values() if isinstance(d, Deployment)))


def host(url: str) -> str:
    return url.removeprefix("http://")


def skopeo(*args, check=True):
    need("skopeo")
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
    # qa's layers are in its bucket (prod fetched them from there through redirects)
    manifest = json.loads((layout / "blobs/sha256" / pushed.split(":")[1]).read_bytes())
    in_bucket = set(deployments["s3"].keys(deployments["bucket"], "blobs/"))
    assert {f"blobs/sha256/{d['digest'][7:9]}/{d['digest'][7:]}" for d in manifest["layers"]} <= in_bucket
    assert not (qa.data_dir / "storage" / "blobs").exists()

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


# -- faults -------------------------------------------------------------------------------


def push_to(deployment: Deployment, name: str, tmp_path, layer_sizes=(300_000, 200_000), tag="v1") -> str:
    layout = tmp_path / f"layout-{name.replace('/', '-')}"
    digest = make_image_layout(layout, layer_sizes=layer_sizes, tag=tag)
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "admin:admin-password",
           f"oci:{layout}:{tag}", f"docker://{host(deployment.url)}/{name}:{tag}")
    return digest


def push_mirror(dev: Deployment, name: str, remote_url: str, secret: str, **extra) -> dict:
    """A push mirror of `name` to the same name on qa, where it is created first (the
    mirror's identity may push into the organization, not create repositories in it)."""
    namespace, _, rest = name.partition("/")
    created = requests.post(f"{remote_url}/api/v0/repositories/{namespace}", json={"name": rest},
                            auth=("admin", "admin-password"), timeout=30)
    assert created.status_code in (201, 400), created.text
    response = dev.api("POST", f"repositories/{name}/pushMirroringPolicies", json={
        "enabled": True, "rules": [], "remoteHost": remote_url, "remoteRepository": name,
        "username": "mirror", "authToken": secret, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def run_now(deployment: Deployment, action: str, policy: dict, tag="v1") -> dict:
    response = deployment.api("POST", "jobs", json={"action": action, "policy": policy["id"], "tag": tag})
    assert response.status_code == 202, response.text
    return response.json()


def finished(deployment: Deployment, job: dict, timeout=90) -> dict:
    def check():
        current = deployment.api("GET", f"jobs/{job['id']}").json()
        return current if current["status"] in ("done", "failed", "canceled") else None
    return wait_for(check, timeout=timeout, what=f"job {job['id']} to finish")


def test_a_remote_answering_503_twice_is_retried_with_backoff_until_the_copy_succeeds(deployments, tmp_path):
    from tests.faults import FaultProxy

    dev, qa = deployments["dev"], deployments["qa"]
    pushed = push_to(dev, "team/flaky", tmp_path)
    proxy = FaultProxy(qa.url)
    try:
        policy = push_mirror(dev, "team/flaky", proxy.url, deployments["secrets"]["MIRROR"])
        proxy.fail_next = 2  # the first request of the first two attempts
        job = finished(dev, run_now(dev, "push_mirror", policy))
    finally:
        proxy.close()
    assert job["status"] == "done", job
    assert job["attempts"] == 3 and proxy.refused == 2
    log = dev.api("GET", f"jobs/{job['id']}").json()["log"]
    assert len(re.findall(r"HTTP 503\b.*; retrying in", log)) == 2, log
    assert tag_digest(qa, "team/flaky", "v1") == pushed


def test_a_worker_killed_mid_copy_is_replaced_and_the_remote_never_shows_a_broken_image(deployments, tmp_path):
    import threading

    from tests.client import Registry
    from tests.faults import FaultProxy

    dev, qa = deployments["dev"], deployments["qa"]
    pushed = push_to(dev, "team/killed", tmp_path, layer_sizes=(3_000_000, 3_000_000, 3_000_000))
    proxy = FaultProxy(qa.url)
    proxy.upload_bytes_per_second = 1_000_000  # each blob takes about 3 s to arrive
    reader = Registry(qa.url, "admin", "admin-password")
    broken, seen, stop = [], [], threading.Event()

    def watch():
        """Whenever qa shows the tag, every blob it references must be there."""
        token = reader.token("repository:team/killed:pull")
        while not stop.is_set():
            response = reader.request("GET", "/v2/team/killed/manifests/v1", token=token,
                                      headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            if response.status_code == 200:
                seen.append(True)
                manifest = response.json()
                for descriptor in [manifest["config"], *manifest["layers"]]:
                    head = reader.request("HEAD", f"/v2/team/killed/blobs/{descriptor['digest']}", token=token)
                    if head.status_code != 200:
                        broken.append((descriptor["digest"], head.status_code))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        policy = push_mirror(dev, "team/killed", proxy.url, deployments["secrets"]["MIRROR"])
        job = run_now(dev, "push_mirror", policy)
        wait_for(lambda: dev.api("GET", f"jobs/{job['id']}").json()["bytesDone"] > 0, what="copy under way")
        dev.kill_worker()
        assert dev.api("GET", f"jobs/{job['id']}").json()["status"] == "running"
        assert tag_digest(qa, "team/killed", "v1") is None
        proxy.upload_bytes_per_second = 0
        dev.start_worker()
        job = finished(dev, job)
        if job["status"] == "done":
            # the tag appears as the job ends: let the watcher look at least once more
            wait_for(lambda: seen, what="the watcher to see the mirrored tag")
    finally:
        stop.set()
        watcher.join()
        proxy.close()
    assert job["status"] == "done", job
    assert job["attempts"] >= 2
    log = dev.api("GET", f"jobs/{job['id']}").json()["log"]
    assert "stopped answering" in log, log
    assert tag_digest(qa, "team/killed", "v1") == pushed
    assert seen and not broken, broken


def test_bad_credentials_fail_the_job_at_once_with_the_reason(deployments, tmp_path):
    dev, qa = deployments["dev"], deployments["qa"]
    push_to(dev, "team/creds", tmp_path)
    secret = qa.shell("from accounts.models import AccessToken, User\n"
                      "print(AccessToken.issue(User.objects.get(username='mirror'), name='revoked-soon')[1])").strip()
    policy = push_mirror(dev, "team/creds", qa.url, secret)
    qa.shell("from accounts.models import AccessToken\nAccessToken.objects.filter(name='revoked-soon').delete()")
    job = finished(dev, run_now(dev, "push_mirror", policy), timeout=30)
    assert job["status"] == "failed" and job["attempts"] == 1, job
    assert "refused the credentials (HTTP 401" in job["error"], job["error"]
    assert secret not in dev.api("GET", f"jobs/{job['id']}").json()["log"]
    assert tag_digest(qa, "team/creds", "v1") is None


def test_saving_a_push_mirror_with_wrong_credentials_is_refused_with_the_remote_reason(deployments):
    dev, qa = deployments["dev"], deployments["qa"]
    response = dev.api("POST", "repositories/team/app/pushMirroringPolicies", json={
        "enabled": True, "remoteHost": qa.url, "remoteRepository": "team/app",
        "username": "mirror", "password": "wrong"})
    assert response.status_code == 400
    assert "The remote registry refused" in response.json()["remoteHost"][0]
    assert "wrong" not in response.text
    # read-only on the remote: saving a push mirror is refused too
    response = dev.api("POST", "repositories/team/app/pushMirroringPolicies", json={
        "enabled": True, "remoteHost": qa.url, "remoteRepository": "team/app",
        "username": "reader", "authToken": deployments["secrets"]["READER"]})
    assert response.status_code == 400, response.text


# -- a foreign registry ------------------------------------------------------------------------


@pytest.fixture
def distribution(tmp_path):
    """Debian's docker-registry (CNCF Distribution 2.8), no auth, on a free port."""
    from tests.processes import Process, free_port

    need("docker-registry")
    port = free_port()
    root = tmp_path / "distribution"
    root.mkdir()
    config = root / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    process = Process(["docker-registry", "serve", str(config)], dict(os.environ), root / "registry.log")
    url = f"http://127.0.0.1:{port}"
    process.wait_http(f"{url}/v2/")
    yield url
    process.stop()


def test_poll_mirroring_from_cncf_distribution(deployments, distribution, tmp_path):
    prod = deployments["prod"]
    digests = {}
    for tag, sizes in (("1.0", (100_000,)), ("1.1", (120_000, 5_000)), ("latest", (1_000,))):
        layout = tmp_path / f"dist-{tag}"
        digests[tag] = make_image_layout(layout, layer_sizes=sizes, tag=tag)
        skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
               f"docker://{host(distribution)}/library/tool:{tag}")
    assert prod.api("POST", "repositories/team", json={"name": "tool"}).status_code == 201
    policy = prod.api("POST", "repositories/team/tool/pollMirroringPolicies", json={
        "enabled": True, "rules": [{"field": "tag", "operator": "sw", "values": ["1."]}],
        "remoteHost": distribution, "remoteRepository": "library/tool", "interval": 3600})
    assert policy.status_code == 201, policy.text
    # beat starts the first poll at once (the policy was never polled)
    wait_for(lambda: tag_digest(prod, "team/tool", "1.1"), timeout=60, what="poll from Distribution")
    assert tag_digest(prod, "team/tool", "1.0") == digests["1.0"]
    assert tag_digest(prod, "team/tool", "1.1") == digests["1.1"]
    assert tag_digest(prod, "team/tool", "latest") is None
    job = finished(prod, prod.api("GET", f"jobs?policy={policy.json()['id']}").json()["results"][-1])
    assert job["status"] == "done" and job["triggeredBy"] == "schedule"

    # the next run finds nothing new and copies nothing
    again = finished(prod, run_now(prod, "poll_mirror", policy.json(), tag=""))
    assert again["status"] == "done" and again["results"] == [] and again["bytesTotal"] == 0


# -- what travels, chains, events ------------------------------------------------------------


def test_push_mirror_carries_an_index_with_its_children_and_referrers(deployments, tmp_path):
    from tests.client import Registry
    from tests.images import make_index_layout

    dev, qa = deployments["dev"], deployments["qa"]
    layout = tmp_path / "index"
    index = make_index_layout(layout, architectures=("amd64", "arm64"), tag="v1")
    skopeo("copy", "--all", "--dest-tls-verify=false", "--dest-creds", "admin:admin-password",
           f"oci:{layout}:v1", f"docker://{host(dev.url)}/team/multi:v1")
    subject = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": index,
               "size": len((layout / "blobs" / "sha256" / index.split(":")[1]).read_bytes())}
    signature, response = Registry(dev.url, "admin", "admin-password").push_image(
        "team/multi", "sig", layers=(b"a signature",), subject=subject,
        artifact_type="application/vnd.dev.cosign.simplesigning.v1+json")
    assert response.status_code == 201, response.text

    policy = push_mirror(dev, "team/multi", qa.url, deployments["secrets"]["MIRROR"])
    job = finished(dev, run_now(dev, "push_mirror", policy))
    assert job["status"] == "done", job
    assert tag_digest(qa, "team/multi", "v1") == index
    qa_client = Registry(qa.url, "admin", "admin-password")
    referrers = qa_client.request("GET", f"/v2/team/multi/referrers/{index}",
                                  scope="repository:team/multi:pull").json()["manifests"]
    assert [r["digest"] for r in referrers] == [signature]
    for child in json.loads((layout / "blobs" / "sha256" / index.split(":")[1]).read_bytes())["manifests"]:
        head = qa_client.request("HEAD", f"/v2/team/multi/manifests/{child['digest']}",
                                 scope="repository:team/multi:pull")
        assert head.status_code == 200


def test_promotions_chain_and_a_loop_of_policies_ends(deployments, tmp_path):
    dev = deployments["dev"]
    for name in ("stage1", "stage2", "stage3"):
        assert dev.api("POST", "repositories/team", json={"name": name}).status_code == 201
    policies = []
    for source, target in (("stage1", "stage2"), ("stage2", "stage3"), ("stage3", "stage1")):
        response = dev.api("POST", f"repositories/team/{source}/promotionPolicies", json={
            "rules": [], "targetRepository": f"team/{target}", "tagTemplate": "%n"})
        assert response.status_code == 201, response.text
        policies.append(response.json()["id"])
    pushed = push_to(dev, "team/stage1", tmp_path)
    wait_for(lambda: tag_digest(dev, "team/stage3", "v1"), what="two promotions in a row")
    assert tag_digest(dev, "team/stage2", "v1") == tag_digest(dev, "team/stage3", "v1") == pushed
    # stage3 → stage1 finds stage1:v1 already at that digest: nothing changes, the loop ends
    wait_for(lambda: job_of(dev, policies[2]), what="the loop's last promotion")
    time.sleep(2)
    jobs = [dev.api("GET", f"jobs?policy={p}").json()["count"] for p in policies]
    assert jobs == [1, 1, 1], jobs


def test_promotion_and_mirroring_send_webhook_events(deployments, tmp_path):
    from tests.fixtures.webhooks import Receiver

    dev, qa = deployments["dev"], deployments["qa"]
    assert dev.api("POST", "repositories/team", json={"name": "hooked"}).status_code == 201
    receiver = Receiver(failures=0)
    for event in ("PROMOTION", "PUSH_MIRRORING"):
        hook = dev.api("POST", "webhooks", json={"type": event, "key": "team/hooked", "endpoint": receiver.url})
        assert hook.status_code == 201, hook.text
    assert dev.api("POST", "repositories/team/hooked/promotionPolicies", json={
        "rules": [{"field": "tag", "operator": "eq", "values": ["v1"]}], "targetRepository": "team/hooked",
        "tagTemplate": "%n-%Y%m%d"}).status_code == 201
    push_mirror(dev, "team/hooked", qa.url, deployments["secrets"]["MIRROR"],
                rules=[{"field": "tag", "operator": "sw", "values": ["v1-"]}])
    pushed = push_to(dev, "team/hooked", tmp_path)
    receiver.wait_for(2)
    events = {json.loads(body)["type"]: json.loads(body)["contents"] for _, body in receiver.requests}
    promoted = events["PROMOTION"]
    assert promoted["status"] == "done" and promoted["results"][0]["digest"] == pushed
    target_tag = promoted["results"][0]["targetTag"]
    assert target_tag.startswith("v1-20") and len(target_tag) == len("v1-20261127")
    mirrored = events["PUSH_MIRRORING"]
    assert mirrored["status"] == "done" and mirrored["results"] == [
        {"tag": target_tag, "targetTag": target_tag, "digest": pushed}]
    assert tag_digest(qa, "team/hooked", target_tag) == pushed


def test_referrers_travel_through_a_registry_without_the_referrers_api(deployments, distribution, tmp_path):
    """dev → Distribution (push mirror) → prod (poll mirror): Distribution 2.8 has no
    referrers API, so the signature goes into the spec's fallback tag and comes back."""
    from tests.client import Registry

    dev, prod = deployments["dev"], deployments["prod"]
    assert dev.api("POST", "repositories/team", json={"name": "signed"}).status_code == 201
    admin = Registry(dev.url, "admin", "admin-password")
    image, response = admin.push_image("team/signed", "1.0", layers=(b"app layer",))
    assert response.status_code == 201
    subject = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": image,
               "size": int(response.request.headers["Content-Length"])}
    signature, response = admin.push_image("team/signed", "sig", layers=(b"signature",), subject=subject,
                                           artifact_type="application/vnd.example.signature")
    assert response.status_code == 201

    push = dev.api("POST", "repositories/team/signed/pushMirroringPolicies", json={
        "rules": [{"field": "tag", "operator": "eq", "values": ["1.0"]}], "remoteHost": distribution,
        "remoteRepository": "mirrors/signed"})
    assert push.status_code == 201, push.text
    assert finished(dev, run_now(dev, "push_mirror", push.json(), tag="1.0"))["status"] == "done"
    fallback = requests.get(f"{distribution}/v2/mirrors/signed/manifests/{image.replace(':', '-')}",
                            headers={"Accept": "application/vnd.oci.image.index.v1+json"}, timeout=10).json()
    assert [(m["digest"], m["artifactType"]) for m in fallback["manifests"]] == [
        (signature, "application/vnd.example.signature")]

    assert prod.api("POST", "repositories/team", json={"name": "signed"}).status_code == 201
    poll = prod.api("POST", "repositories/team/signed/pollMirroringPolicies", json={
        "rules": [{"field": "tag", "operator": "eq", "values": ["1.0"]}], "remoteHost": distribution,
        "remoteRepository": "mirrors/signed", "interval": 3600})
    assert poll.status_code == 201, poll.text
    wait_for(lambda: tag_digest(prod, "team/signed", "1.0"), what="poll from Distribution")
    assert tag_digest(prod, "team/signed", "1.0") == image
    referrers = Registry(prod.url, "admin", "admin-password").request(
        "GET", f"/v2/team/signed/referrers/{image}", scope="repository:team/signed:pull").json()["manifests"]
    assert [r["digest"] for r in referrers] == [signature]


def test_a_running_copy_can_be_canceled_and_publishes_nothing(deployments, tmp_path):
    from tests.faults import FaultProxy

    dev, qa = deployments["dev"], deployments["qa"]
    push_to(dev, "team/canceled", tmp_path, layer_sizes=(3_000_000, 3_000_000))
    proxy = FaultProxy(qa.url)
    proxy.upload_bytes_per_second = 1_000_000
    try:
        policy = push_mirror(dev, "team/canceled", proxy.url, deployments["secrets"]["MIRROR"])
        job = run_now(dev, "push_mirror", policy)
        wait_for(lambda: dev.api("GET", f"jobs/{job['id']}").json()["bytesDone"] > 0, what="copy under way")
        assert dev.api("POST", f"jobs/{job['id']}/cancel").json()["status"] == "running"
        job = finished(dev, job, timeout=30)
    finally:
        proxy.close()
    assert job["status"] == "canceled", job
    assert tag_digest(qa, "team/canceled", "v1") is None
