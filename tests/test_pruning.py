"""Tag pruning policies (issue 17, part 2) against real processes: a deployment of its
own (`msr serve` and a Celery worker with beat, its own database, broker database 6),
pushes over /v2/ and runs through the REST API, so that no other module sees its
scheduled runs or its read-only mode.

Policies created here are disabled (runs on demand only) but in the test of the schedule:
beat runs every enabled policy every INTERVAL seconds."""

import json
import os
import threading
import time
from datetime import datetime

import pytest

from msr.manifests import OCI_INDEX
from tests.client import Registry, signed_in_page_client
from tests.deployments import Deployment, wait_for

REDIS = os.environ.get("MSR_TEST_REDIS_URL", "redis://127.0.0.1:6379/11").rpartition("/")[0] + "/6"
INTERVAL = 3
CACHE_SECONDS = 0.5


@pytest.fixture(scope="module")
def deployment(db_url, tmp_path_factory):
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    made = Deployment("pruning", tmp_path_factory.mktemp("pruning"), db_url, REDIS,
                      extra_env={"MSR_PRUNING_INTERVAL": str(INTERVAL),
                                 "MSR_READ_ONLY_CACHE_SECONDS": str(CACHE_SECONDS),
                                 "MSR_READ_ONLY_JOB_WAIT_SECONDS": "1"})
    try:
        made.with_admin("team")
        made.start()
        yield made
    finally:
        made.stop()


@pytest.fixture
def client(deployment) -> Registry:
    return Registry(deployment.url, "admin", "admin-password")


def index(n) -> bytes:
    """A distinct empty index (no blob to upload): a cheap image to tag."""
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [],
                       "annotations": {"n": str(n)}}).encode()


def push(client: Registry, name: str, tag: str, n=None) -> str:
    response = client.push_manifest(name, tag, index(n if n is not None else f"{name}:{tag}:{time.time_ns()}"),
                                    media_type=OCI_INDEX)
    assert response.status_code == 201, response.text
    return response.headers["Docker-Content-Digest"]


def tags(deployment, name: str) -> set[str]:
    response = deployment.api("GET", f"repositories/{name}/tags")
    assert response.status_code == 200, response.text
    return {t["name"] for t in response.json()}


def policy(deployment, name: str, rules, enabled=False) -> int:
    response = deployment.api("POST", f"repositories/{name}/pruningPolicies", json={"rules": rules, "enabled": enabled})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def run(deployment, name: str, policy_id: int, dry_run=False, wait=True) -> dict:
    response = deployment.api("POST", f"repositories/{name}/pruningPolicies/{policy_id}/run", json={"dryRun": dry_run})
    assert response.status_code == 202, response.text
    started = response.json()
    return finished(deployment, name, started["id"]) if wait else started


def finished(deployment, name: str, run_id: int, timeout=60) -> dict:
    def done():
        found = deployment.api("GET", f"repositories/{name}/pruningRuns/{run_id}").json()
        return found if found["status"] in ("done", "failed") else None

    found = wait_for(done, timeout=timeout, what=f"pruning run {run_id}")
    assert found["status"] == "done", found
    return found


def names(items) -> set[str]:
    return {item["tag"] for item in items}


def test_a_dry_run_and_a_real_run_agree(deployment, client):
    name = "team/agree"
    for tag in ("a-1", "a-2", "a-3", "b-1", "latest"):
        push(client, name, tag)
    policy_id = policy(deployment, name, [{"field": "tag", "operator": "sw", "values": ["a-", "b-"]},
                                          {"field": "tag", "operator": "noneof", "values": ["a-3"]},
                                          {"field": "last_pushed", "operator": "lte", "values": ["0s"]}])
    dry = run(deployment, name, policy_id, dry_run=True)
    assert names(dry["candidates"]) == {"a-1", "a-2", "b-1"} and dry["pruned"] == []
    assert tags(deployment, name) == {"a-1", "a-2", "a-3", "b-1", "latest"}  # nothing deleted
    tested = deployment.api("POST", f"repositories/{name}/pruningPolicies/test", json={"rules": dry["rules"]}).json()
    assert names(tested["candidates"]) == names(dry["candidates"])

    real = run(deployment, name, policy_id)
    assert names(real["pruned"]) == names(dry["candidates"])
    assert tags(deployment, name) == {"a-3", "latest"}
    # Recorded like a tag deletion, and announced as TAG_PRUNED.
    events = deployment.shell(
        "from msr.models import Event\n"
        f"print(sorted(Event.objects.filter(type=Event.DELETE, repository={name!r}, "
        "detail__reason='pruning policy').values_list('tag', flat=True)))")
    assert events.strip() == "['a-1', 'a-2', 'b-1']"
    runs = deployment.api("GET", f"repositories/{name}/pruningRuns").json()
    assert [r["dryRun"] for r in runs] == [False, True] and "pruned a-1" in runs[0]["log"]


def test_a_tag_pruned_sends_a_tag_pruned_webhook(deployment, client):
    name = "team/hooked"
    push(client, name, "gone")
    response = deployment.api("POST", "webhooks", json={
        "type": "TAG_PRUNED", "key": name, "endpoint": "http://127.0.0.1:9/hook"})
    assert response.status_code == 201, response.text
    run(deployment, name, policy(deployment, name, [{"field": "tag", "operator": "eq", "values": ["gone"]}]))
    payload = deployment.shell(
        "import json\nfrom msr.models import WebhookDelivery\n"
        "print(json.dumps(WebhookDelivery.objects.get(event_type='TAG_PRUNED').payload))")
    contents = json.loads(payload)["contents"]
    assert contents["tag"] == "gone" and contents["reason"] == "pruning policy"


def test_protected_tags_stay(deployment, client):
    name, target = "team/guarded", "team/guarded-prod"
    push(client, name, "p-immutable")
    response = deployment.api("PATCH", f"repositories/{name}", json={"immutableTagPatterns": ["p-imm*"]})
    assert response.status_code == 200, response.text
    child = push(client, name, "p-child", n="child")
    kept_index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, "digest": child, "size": len(index("child"))}]}).encode()
    assert client.push_manifest(name, "keep-index", kept_index, media_type=OCI_INDEX).status_code == 201
    push(client, name, "p-free")
    # A promotion into the target: its result is protected there while the policy is enabled.
    response = deployment.api("POST", f"repositories/{name}/promotionPolicies", json={
        "rules": [{"field": "tag", "operator": "eq", "values": ["release"]}], "targetRepository": target,
        "tagTemplate": "%n-prod"})
    assert response.status_code == 201, response.text
    push(client, name, "release")
    wait_for(lambda: deployment.api("GET", f"repositories/{target}/tags/release-prod").status_code == 200,
             what="the promotion")
    push(client, target, "p-plain")

    found = run(deployment, name, policy(deployment, name, [{"field": "tag", "operator": "sw", "values": ["p-"]}]))
    assert names(found["pruned"]) == {"p-free"}
    reasons = {item["tag"]: item["reason"] for item in found["protected"]}
    assert reasons["p-immutable"].startswith("immutable") and "keep-index" not in reasons
    assert reasons["p-child"].startswith("referenced by the index")
    assert tags(deployment, name) == {"p-immutable", "p-child", "keep-index", "release"}

    everything = [{"field": "tag", "operator": "matches", "values": [".*"]}]
    found = run(deployment, target, policy(deployment, target, everything))
    assert names(found["pruned"]) == {"p-plain"}
    assert names(found["protected"]) == {"release-prod"}
    assert tags(deployment, target) == {"release-prod"}


def test_last_pulled_rules_use_recorded_pull_times(deployment, client):
    name = "team/pulled"
    push(client, name, "l-pulled")
    push(client, name, "l-idle")
    response = client.request("GET", f"/v2/{name}/manifests/l-pulled", scope=f"repository:{name}:pull",
                              headers={"Accept": OCI_INDEX})
    assert response.status_code == 200
    # Pull times are written in batches (at most a second late).
    recent = [{"field": "tag", "operator": "sw", "values": ["l-"]},
              {"field": "last_pulled", "operator": "gte", "values": ["10m"]}]
    test = lambda rules: deployment.api("POST", f"repositories/{name}/pruningPolicies/test",  # noqa: E731
                                        json={"rules": rules}).json()
    assert names(wait_for(lambda: test(recent)["candidates"], what="the pull time"))  == {"l-pulled"}
    idle = [recent[0], {"field": "last_pulled", "operator": "lte", "values": ["10m"]}]
    assert names(test(idle)["candidates"]) == {"l-idle"}  # never pulled counts as long ago
    found = run(deployment, name, policy(deployment, name, idle))
    assert names(found["pruned"]) == {"l-idle"} and tags(deployment, name) == {"l-pulled"}


def test_a_scheduled_run_happens_under_beat(deployment, client):
    name = "team/scheduled"
    push(client, name, "nightly-1")
    push(client, name, "stable")
    policy_id = policy(deployment, name, [{"field": "tag", "operator": "sw", "values": ["nightly-"]}], enabled=True)
    try:
        wait_for(lambda: tags(deployment, name) == {"stable"}, timeout=6 * INTERVAL + 30, what="a scheduled run")
        runs = deployment.api("GET", f"repositories/{name}/pruningRuns").json()
        assert any(r["trigger"] == "schedule" and names(r["pruned"]) == {"nightly-1"} for r in runs), runs
    finally:
        deployment.api("PATCH", f"repositories/{name}/pruningPolicies/{policy_id}", json={"enabled": False})


def test_pushes_during_a_run_lose_nothing_pushed_after_it_began(deployment, client):
    name = "team/busy"
    old = [f"c-{i:03d}" for i in range(150)]
    for tag in old:
        push(client, name, tag)
    policy_id = policy(deployment, name, [{"field": "tag", "operator": "sw", "values": ["c-"]}])
    pushed: list[tuple[float, str, str]] = []  # (time the push began, tag, digest)
    stop = threading.Event()

    def pusher():
        i = 0
        while not stop.is_set():
            tag = old[-1 - i % len(old)] if i % 2 else f"c-new-{i:04d}"  # re-push old ones too
            began = time.time()
            pushed.append((began, tag, push(client, name, tag)))
            i += 1

    thread = threading.Thread(target=pusher)
    thread.start()
    try:
        started = run(deployment, name, policy_id, wait=False)
        found = finished(deployment, name, started["id"], timeout=120)
    finally:
        stop.set()
        thread.join()
    began = datetime.fromisoformat(found["startedAt"].replace("Z", "+00:00")).timestamp()
    after = {}
    for at, tag, digest in pushed:
        if at >= began:
            after[tag] = digest
    assert after, "no push happened during the run"
    assert found["pruned"], found["log"]
    now = {t["name"]: t["digest"] for t in deployment.api("GET", f"repositories/{name}/tags").json()}
    lost = {tag for tag in after if tag not in now}
    assert not lost, f"pushed after the run began and pruned: {sorted(lost)}"
    pruned_after = names(found["pruned"]) & set(after)
    for tag in pruned_after:  # pruned, then pushed again: exists with its newest digest
        assert now[tag] == after[tag]


# What beat's schedule_pruning does for one policy (the API refuses changes in read-only mode).
START_RUN = """
from django.db import transaction
from msr import pruning
from msr.models import PruningPolicy
with transaction.atomic():
    print(pruning.start(PruningPolicy.objects.get(pk={}), False, "schedule").pk)
"""


def test_a_real_run_waits_while_the_registry_is_read_only(deployment, client):
    name = "team/frozen"
    push(client, name, "old")
    policy_id = policy(deployment, name, [{"field": "tag", "operator": "eq", "values": ["old"]}])
    assert deployment.api("PATCH", "meta/settings", json={"readOnly": True}).status_code == 200
    try:
        time.sleep(2 * CACHE_SECONDS)
        run_id = int(deployment.shell(START_RUN.format(policy_id)))
        path = f"repositories/{name}/pruningRuns/{run_id}"
        waiting = wait_for(lambda: (r := deployment.api("GET", path).json())["error"] and r, what="the wait")
        assert waiting["status"] == "waiting" and "read-only" in waiting["log"]
        time.sleep(2)
        assert deployment.api("GET", path).json()["status"] == "waiting"
        assert tags(deployment, name) == {"old"}
    finally:
        assert deployment.api("PATCH", "meta/settings", json={"readOnly": False}).status_code == 200
    found = finished(deployment, name, run_id)
    assert names(found["pruned"]) == {"old"} and tags(deployment, name) == set()


@pytest.mark.parametrize("rules, message", [
    ([{"field": "size", "operator": "eq", "values": ["1"]}], "unknown field"),
    ([{"field": "tag", "operator": "lte", "values": ["1"]}], "does not apply to tag"),
    ([{"field": "last_pushed", "operator": "gte", "values": ["soon"]}], "an age like 30d"),
    ([{"field": "tag", "operator": "matches", "values": ["("]}], "not a regular expression"),
    ([{"field": "tag", "operator": "eq", "values": []}], "values must be"),
    ([], "non-empty list"),
    ("tag", "non-empty list"),
])
def test_bad_rules_are_refused_with_a_json_400(deployment, client, rules, message):
    name = "team/validated"
    push(client, name, "any")
    for path in ("pruningPolicies", "pruningPolicies/test"):
        response = deployment.api("POST", f"repositories/{name}/{path}", json={"rules": rules})
        assert response.status_code == 400, response.text
        assert message in json.dumps(response.json()["rules"]), response.json()


# -- in process: the repository page's Pruning section (fast tier) --------------------------


@pytest.fixture
def repository(personas, unique):
    from accounts.models import Namespace
    from msr.models import Repository

    found = Repository.objects.create(namespace=Namespace.objects.get(name="acme"), name=f"pruned-{unique}")
    yield found
    found.delete()


def _page_client(persona):
    return signed_in_page_client(persona.user)


def test_a_repository_admin_adds_a_policy_and_sees_its_dry_run_on_the_page(repository, personas):
    from msr import services
    from msr.models import PruningPolicy

    for tag in ("dev-1", "dev-2", "release-1"):
        services.put_manifest(repository, tag, index(tag), OCI_INDEX, None)
    repository.immutable_tag_patterns = ["dev-2"]
    repository.save()
    web = _page_client(personas["alice"])
    page = f"/repositories/{repository.full_name}/"
    assert "New pruning policy" in web.get(page).content.decode()
    response = web.post(f"{page}pruning/", {"field_0": "tag", "operator_0": "sw", "values_0": "dev-",
                                            "enabled": ""})
    assert response.status_code == 302, response.content.decode()
    policy = PruningPolicy.objects.get(repository=repository)
    assert policy.rules == [{"field": "tag", "operator": "sw", "values": ["dev-"]}] and not policy.enabled
    preview = web.post(f"{page}pruning/{policy.pk}/preview/").content.decode()
    assert "1 tag(s) would be pruned: <code>dev-1</code>" in preview
    assert "<code>dev-2</code>: immutable" in preview
    assert set(repository.tags.values_list("name", flat=True)) == {"dev-1", "dev-2", "release-1"}


def test_a_bad_rule_in_the_form_answers_400_with_the_reason(repository, personas):
    web = _page_client(personas["alice"])
    response = web.post(f"/repositories/{repository.full_name}/pruning/",
                        {"field_0": "last_pushed", "operator_0": "sw", "values_0": "x"})
    assert response.status_code == 400
    assert "does not apply to last_pushed" in response.content.decode()


def test_a_repository_admin_edits_enables_and_disables_a_policy_on_the_page(repository, personas):
    from msr.models import Event, PruningPolicy

    policy = PruningPolicy.objects.create(repository=repository, enabled=False,
                                          rules=[{"field": "tag", "operator": "sw", "values": ["dev-"]}])
    web = _page_client(personas["alice"])
    page = f"/repositories/{repository.full_name}/"
    shown = web.get(page).content.decode()
    assert f"Edit policy {policy.pk}" in shown and 'value="dev-"' in shown  # the form holds the rules
    prefix = f"policy-{policy.pk}-"
    response = web.post(f"{page}pruning/{policy.pk}/edit/", {
        f"{prefix}field_0": "tag", f"{prefix}operator_0": "sw", f"{prefix}values_0": "dev-, tmp-",
        f"{prefix}field_1": "last_pushed", f"{prefix}operator_1": "lte", f"{prefix}values_1": "30d",
        f"{prefix}enabled": "on"})
    assert response.status_code == 302, response.content.decode()
    policy.refresh_from_db()
    assert policy.enabled and policy.rules == [{"field": "tag", "operator": "sw", "values": ["dev-", "tmp-"]},
                                               {"field": "last_pushed", "operator": "lte", "values": ["30d"]}]
    audit = Event.objects.filter(detail__action="pruning policy updated", detail__policy=policy.pk).latest("pk")
    assert audit.actor == "alice" and audit.detail["rules"] == policy.rules

    # A bad edit: 400 with the reason in the policy's own form, nothing saved.
    response = web.post(f"{page}pruning/{policy.pk}/edit/", {
        f"{prefix}field_0": "last_pushed", f"{prefix}operator_0": "sw", f"{prefix}values_0": "x"})
    assert response.status_code == 400 and "does not apply to last_pushed" in response.content.decode()
    before = policy.rules
    policy.refresh_from_db()
    assert policy.rules == before and policy.enabled

    assert web.post(f"{page}pruning/{policy.pk}/disable/").status_code == 302
    policy.refresh_from_db()
    assert not policy.enabled and "on demand only" in web.get(page).content.decode()
    assert web.post(f"{page}pruning/{policy.pk}/enable/").status_code == 302
    policy.refresh_from_db()
    assert policy.enabled


def test_only_repository_admins_edit_or_enable_a_policy_on_the_page(repository, personas):
    from msr.models import PruningPolicy

    rules = [{"field": "tag", "operator": "sw", "values": ["dev-"]}]
    policy = PruningPolicy.objects.create(repository=repository, enabled=False, rules=rules)
    page = f"/repositories/{repository.full_name}/pruning/{policy.pk}"
    for who in ("bob", "wanda"):  # may read the repository, not administer it
        web = _page_client(personas[who])
        edit = web.post(f"{page}/edit/", {f"policy-{policy.pk}-field_0": "tag", f"policy-{policy.pk}-operator_0": "eq",
                                          f"policy-{policy.pk}-values_0": "v1", f"policy-{policy.pk}-enabled": "on"})
        assert edit.status_code in (403, 404), (who, edit.status_code)
        assert web.post(f"{page}/enable/").status_code in (403, 404)
    policy.refresh_from_db()
    assert policy.rules == rules and not policy.enabled


def test_a_policy_whose_values_hold_commas_is_edited_through_the_api_not_the_page(repository, personas):
    from msr.models import PruningPolicy

    rules = [{"field": "tag", "operator": "matches", "values": ["v[0-9]{1,3}"]}]
    policy = PruningPolicy.objects.create(repository=repository, enabled=False, rules=rules)
    web = _page_client(personas["alice"])
    page = f"/repositories/{repository.full_name}/"
    assert "has values with commas: edit it through the API" in web.get(page).content.decode()
    response = web.post(f"{page}pruning/{policy.pk}/edit/", {f"policy-{policy.pk}-field_0": "tag",
                                                             f"policy-{policy.pk}-operator_0": "matches",
                                                             f"policy-{policy.pk}-values_0": "v[0-9]{1,3}"})
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.rules == rules  # not split into "v[0-9]{1" and "3}"


@pytest.mark.parametrize("who, status", [("bob", 403), ("wanda", 403), ("adam", 200), ("alice", 200)])
def test_only_repository_admins_manage_pruning(personas, who, status):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(personas[who].user)
    assert api.get("/api/v0/repositories/acme/private-app/pruningPolicies").status_code == status


def test_a_tag_moved_or_pushed_again_after_the_selection_is_not_pruned(repository):
    from django.utils import timezone

    from msr import pruning, services
    from msr.models import PruningRun

    for tag in ("dev-1", "dev-2", "dev-3"):
        services.put_manifest(repository, tag, index(tag), OCI_INDEX, None)
    rules = [{"field": "tag", "operator": "sw", "values": ["dev-"]}]
    run_row = PruningRun.objects.create(repository=repository, rules=rules, started_at=timezone.now())
    selection = pruning.select(repository, [rules], run_row.started_at)
    assert names(selection.candidates) == {"dev-1", "dev-2", "dev-3"}
    services.put_manifest(repository, "dev-1", index("moved"), OCI_INDEX, None)  # moved
    services.put_manifest(repository, "dev-2", index("dev-2"), OCI_INDEX, None)  # the same image again
    pruned = {tag for tag, (manifest_id, pushed) in selection.seen.items()
              if pruning.prune_tag(repository, tag, manifest_id, pushed, run_row.started_at, run_row)}
    assert pruned == {"dev-3"}
    assert set(repository.tags.values_list("name", flat=True)) == {"dev-1", "dev-2"}


def test_read_only_mode_beginning_during_a_run_pauses_it_and_it_goes_on_after(repository, monkeypatch):
    from msr import pruning, readonly, services
    from msr.models import PruningRun

    for tag in ("dev-1", "dev-2", "dev-3"):
        services.put_manifest(repository, tag, index(tag), OCI_INDEX, None)
    rules = [{"field": "tag", "operator": "sw", "values": ["dev-"]}]
    run_row = PruningRun.objects.create(repository=repository, rules=rules)
    looks = iter([False, False, True])  # before the run, before dev-1, before dev-2: read-only began
    monkeypatch.setattr(readonly, "is_read_only", lambda: next(looks, False))

    assert pruning.execute(run_row.pk) == "read-only"
    paused = PruningRun.objects.get(pk=run_row.pk)
    assert paused.status == PruningRun.WAITING and paused.started_at is None
    assert names(paused.pruned) == {"dev-1"} and "paused before dev-2" in paused.log
    assert set(repository.tags.values_list("name", flat=True)) == {"dev-2", "dev-3"}

    assert pruning.execute(run_row.pk) == PruningRun.DONE  # read-only mode ended
    done = PruningRun.objects.get(pk=run_row.pk)
    assert names(done.pruned) == {"dev-1", "dev-2", "dev-3"} and not done.error
    assert not repository.tags.exists()
