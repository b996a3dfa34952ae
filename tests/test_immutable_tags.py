"""Immutable tags and tag limits (issue 17, part 1).

A repository's tag rules: `immutableTags` (every tag), `immutableTagPatterns` (tags
matching a glob) and `tagLimit`. The first half runs in process against the service
layer and the REST API (fast tier); the second drives skopeo, podman, the Docker CLI and
a promotion against a real `msr serve` (integration).

Personas (tests/conftest.py): alice owns acme, bob reads, wanda writes, admin is the
system admin.
"""

import json
import threading

import pytest
from rest_framework.test import APIClient

from msr import services
from msr.exceptions import ImmutableTag, TagLimitReached
from msr.manifests import OCI_INDEX
from tests.client import Registry, signed_in_page_client
from tests.deployments import wait_for
from tests.fixtures.webhooks import msr_on_redis  # noqa: F401  (fixture)
from tests.images import make_image_layout
from tests.processes import need, run

# -- in process: the service layer --------------------------------------------------------


def _index(n) -> bytes:
    """A distinct, empty index (no blobs to upload): a different `n`, a different digest."""
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [],
                       "annotations": {"n": str(n)}}).encode()


def _push(repository, tag, n, user=None):
    return services.put_manifest(repository, tag, _index(n), OCI_INDEX, user).digest


def _tags(repository) -> dict[str, str]:
    return dict(repository.tags.values_list("name", "manifest__digest"))


@pytest.fixture
def repository(personas, unique):
    from accounts.models import Namespace
    from msr.models import Repository

    found = Repository.objects.create(namespace=Namespace.objects.get(name="acme"), name=f"rules-{unique}")
    yield found
    found.delete()


def _rules(repository, **fields):
    for name, value in fields.items():
        setattr(repository, name, value)
    repository.save()


def test_a_push_over_an_immutable_tag_is_refused_and_the_tag_keeps_its_digest(repository, personas):
    _rules(repository, immutable_tags=True)
    first = _push(repository, "latest", 1)
    with pytest.raises(ImmutableTag) as refused:
        _push(repository, "latest", 2)
    assert refused.value.message == (f"tag=latest cannot be overwritten because {repository.full_name} "
                                     "is an immutable repository")
    assert _tags(repository) == {"latest": first}


def test_the_same_digest_again_is_not_an_overwrite(repository):
    _rules(repository, immutable_tags=True)
    first = _push(repository, "v1", 1)
    assert _push(repository, "v1", 1) == first
    target = services.find_repository(repository.full_name)
    assert services.link_manifest(repository, first, target, "v1", None)[1] is False
    assert _tags(repository) == {"v1": first}


def test_a_pattern_makes_matching_tags_immutable_and_leaves_the_others_movable(repository):
    _rules(repository, immutable_tag_patterns=["release-*"])
    release = _push(repository, "release-1", 1)
    _push(repository, "dev-1", 1)
    moved = _push(repository, "dev-1", 2)
    with pytest.raises(ImmutableTag) as refused:
        _push(repository, "release-1", 2)
    assert "matches the immutable tag rule release-* of" in refused.value.message
    assert refused.value.detail["rule"] == "release-*"
    assert _tags(repository) == {"release-1": release, "dev-1": moved}


def test_a_new_tag_may_be_pushed_to_an_immutable_repository(repository):
    _rules(repository, immutable_tags=True)
    _push(repository, "v1", 1)
    _push(repository, "v2", 2)
    assert set(_tags(repository)) == {"v1", "v2"}


def test_only_a_system_admin_deletes_an_immutable_tag(repository, personas):
    _rules(repository, immutable_tag_patterns=["v*"])
    digest = _push(repository, "v1", 1)
    _push(repository, "scratch", 2)
    for reference in ("v1", digest):
        with pytest.raises(ImmutableTag, match="cannot be deleted"):
            services.delete_manifest(repository.full_name, reference, personas["alice"].user)
    services.delete_manifest(repository.full_name, "scratch", personas["alice"].user)
    assert _tags(repository) == {"v1": digest}
    services.delete_manifest(repository.full_name, "v1", personas["admin"].user)
    assert _tags(repository) == {}


def test_a_promotion_into_an_immutable_target_changes_nothing(repository, unique):
    from msr.models import Repository

    target = Repository.objects.create(namespace=repository.namespace, name=f"rules-target-{unique}",
                                       immutable_tags=True)
    try:
        kept = _push(target, "v1", 1)
        other = _push(repository, "v1", 2)
        with pytest.raises(ImmutableTag):
            services.link_manifest(repository, other, target, "v1", None)
        assert _tags(target) == {"v1": kept}
        assert not target.manifests.filter(digest=other).exists()  # no half-written copy
    finally:
        target.delete()


def test_twelve_pushes_under_a_limit_of_ten_leave_the_ten_newest(repository):
    _rules(repository, tag_limit=10)
    for n in range(12):
        _push(repository, f"build-{n}", n)
    assert set(_tags(repository)) == {f"build-{n}" for n in range(2, 12)}


def test_the_limit_keeps_protected_tags_and_removes_the_oldest_others(repository, personas):
    from msr.models import Event, Webhook, WebhookDelivery

    hook = Webhook.objects.create(event_type=Webhook.TAG_DELETE, namespace=repository.namespace,
                                  repository=repository, endpoint="https://hooks.example/tag-delete")
    _rules(repository, tag_limit=10, immutable_tag_patterns=["release-*"])
    _push(repository, "release-1", 100)
    _push(repository, "release-2", 101)
    for n in range(12):
        _push(repository, f"build-{n}", n, personas["wanda"].user)
    # 14 pushes, 10 places: the two releases stay, the eight newest builds with them.
    assert set(_tags(repository)) == {"release-1", "release-2", *(f"build-{n}" for n in range(4, 12))}
    evicted = Event.objects.filter(type=Event.DELETE, repository=repository.full_name).order_by("pk")
    assert [e.tag for e in evicted] == [f"build-{n}" for n in range(4)]
    assert evicted[0].actor == "wanda" and evicted[0].detail["reason"] == "tag limit"
    deliveries = WebhookDelivery.objects.filter(webhook=hook).order_by("pk")
    assert [d.payload["contents"]["tag"] for d in deliveries] == [f"build-{n}" for n in range(4)]
    assert deliveries[0].payload["contents"]["reason"] == "tag limit"


def test_a_push_beyond_the_limit_is_refused_when_every_tag_is_immutable(repository):
    _rules(repository, tag_limit=2, immutable_tags=True)
    _push(repository, "v1", 1)
    _push(repository, "v2", 2)
    with pytest.raises(TagLimitReached) as refused:
        _push(repository, "v3", 3)
    assert "keeps at most 2 tags and 2 of its tags are immutable" in refused.value.message
    assert set(_tags(repository)) == {"v1", "v2"}
    assert not repository.manifests.filter(digest=services.digest_of(_index(3))).exists()


def test_moving_a_tag_under_the_limit_removes_nothing(repository):
    _rules(repository, tag_limit=2)
    _push(repository, "a", 1)
    _push(repository, "b", 2)
    _push(repository, "a", 3)
    assert set(_tags(repository)) == {"a", "b"}


def test_a_poll_mirror_checks_an_immutable_tag_before_copying_a_byte(repository):
    _rules(repository, immutable_tags=True)
    digest = _push(repository, "v1", 1)
    services.refuse_tag_move(repository, "v1", digest)  # up to date: nothing to refuse
    services.refuse_tag_move(repository, "v2", services.digest_of(_index(2)))  # a new tag
    with pytest.raises(ImmutableTag, match="tag=v1 cannot be overwritten"):
        services.refuse_tag_move(repository, "v1", services.digest_of(_index(2)))


def _at_once(pushes) -> list:
    """Run each push in its own thread (its own database connection), released together;
    returns what each returned or raised."""
    from django.db import connection

    barrier, results = threading.Barrier(len(pushes)), [None] * len(pushes)

    def run_one(i, push):
        try:
            barrier.wait()
            results[i] = push()
        except Exception as e:  # the refusals are the point
            results[i] = e
        finally:
            connection.close()

    threads = [threading.Thread(target=run_one, args=(i, p)) for i, p in enumerate(pushes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_pushes_at_once_keep_the_limit_and_one_digest_per_immutable_tag(repository):
    _rules(repository, tag_limit=3, immutable_tag_patterns=["fixed"])
    results = _at_once([lambda n=n: _push(repository, f"t{n}", n) for n in range(6)]
                       + [lambda n=n: _push(repository, "fixed", 100 + n) for n in range(4)])
    assert all(isinstance(r, str) for r in results[:6]), results
    winners = [r for r in results[6:] if isinstance(r, str)]
    assert len(winners) == 1 and all(isinstance(r, ImmutableTag) for r in results[6:] if r not in winners)
    tags = _tags(repository)
    assert len(tags) == 3 and tags["fixed"] == winners[0], tags


# -- in process: the REST API ---------------------------------------------------------------


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_the_api_creates_reads_and_changes_the_tag_rules(personas, unique):
    from msr.models import Event

    alice = _api(personas["alice"].user)
    created = alice.post("/api/v0/repositories/acme", {"name": f"api-rules-{unique}", "immutableTags": True,
                                                        "immutableTagPatterns": ["release-*", "release-*"],
                                                        "tagLimit": 10}, format="json")
    assert created.status_code == 201, created.content
    assert (created.data["immutableTags"], created.data["immutableTagPatterns"], created.data["tagLimit"]) == (
        True, ["release-*"], 10)
    path = f"/api/v0/repositories/acme/api-rules-{unique}"
    try:
        changed = alice.patch(path, {"immutableTags": False, "tagLimit": 0}, format="json")
        assert changed.status_code == 200, changed.content
        got = alice.get(path).data
        assert (got["immutableTags"], got["immutableTagPatterns"], got["tagLimit"]) == (False, ["release-*"], 0)
        assert Event.objects.filter(repository=f"acme/api-rules-{unique}", detail__action="tag rules").count() == 2
    finally:
        alice.delete(path)


@pytest.mark.parametrize("body,field", [
    ({"tagLimit": -1}, "tagLimit"),
    ({"tagLimit": "ten"}, "tagLimit"),
    ({"immutableTags": "perhaps"}, "immutableTags"),
    ({"immutableTagPatterns": "release-*"}, "immutableTagPatterns"),
    ({"immutableTagPatterns": ["release/*"]}, "immutableTagPatterns"),
    ({"immutableTagPatterns": [""]}, "immutableTagPatterns"),
])
def test_the_api_answers_a_bad_rule_with_a_400_naming_the_field(personas, body, field):
    response = _api(personas["alice"].user).patch("/api/v0/repositories/acme/private-app", body, format="json")
    assert response.status_code == 400
    assert field in response.json()


def test_only_a_repository_admin_changes_the_rules(personas):
    for name, status in [("bob", 403), ("wanda", 403)]:
        response = _api(personas[name].user).patch("/api/v0/repositories/acme/private-app",
                                                   {"immutableTags": True}, format="json")
        assert response.status_code == status, name


def test_the_api_refuses_to_delete_an_immutable_tag_except_for_a_system_admin(repository, personas):
    _rules(repository, immutable_tags=True)
    _push(repository, "v1", 1)
    path = f"/api/v0/repositories/{repository.full_name}/tags/v1"
    refused = _api(personas["alice"].user).delete(path)
    assert refused.status_code == 403
    assert "is an immutable repository" in refused.json()["detail"]
    assert _api(personas["admin"].user).delete(path).status_code == 204


# -- in process: the repository page ----------------------------------------------------------


def _page(user):
    return signed_in_page_client(user)


def test_the_settings_page_saves_the_tag_rules_and_shows_them(repository, personas):
    alice = _page(personas["alice"].user)
    url = f"/repositories/{repository.full_name}/tag-rules/"
    saved = alice.post(url, {"immutable_tag_patterns": "release-*\nrelease-*\nstable", "tag_limit": "5"})
    assert saved.status_code == 302
    repository.refresh_from_db()
    assert (repository.immutable_tags, repository.immutable_tag_patterns, repository.tag_limit) == (
        False, ["release-*", "stable"], 5)
    _push(repository, "release-1", 1)
    page = alice.get(f"/repositories/{repository.full_name}/").content.decode()
    assert "Tags matching release-*, stable are immutable." in page
    assert "At most 5 tags" in page
    assert 'class="badge immutable"' in page and "Only a system admin deletes it" in page


def test_the_settings_page_explains_a_bad_rule_next_to_the_field(repository, personas):
    response = _page(personas["alice"].user).post(f"/repositories/{repository.full_name}/tag-rules/",
                                                  {"immutable_tag_patterns": "release/*", "tag_limit": "-1"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "Not a tag pattern: release/*." in page
    assert "Ensure this value is greater than or equal to 0." in page
    repository.refresh_from_db()
    assert (repository.immutable_tag_patterns, repository.tag_limit) == ([], 0)


def test_only_a_repository_admin_may_save_the_tag_rules(personas):
    response = _page(personas["wanda"].user).post("/repositories/acme/private-app/tag-rules/",
                                                  {"immutable_tags": "on", "tag_limit": "0"})
    assert response.status_code in (403, 404)
    assert "rules_form" not in (_page(personas["wanda"].user).get("/repositories/acme/private-app/").context or {})


def test_deleting_an_immutable_tag_from_the_page_says_why_it_cannot(repository, personas):
    _rules(repository, immutable_tags=True)
    _push(repository, "v1", 1)
    response = _page(personas["alice"].user).post(f"/repositories/{repository.full_name}/tags/v1/delete/",
                                                  follow=True)
    assert "Tag=v1 cannot be deleted because" in response.content.decode()
    assert set(_tags(repository)) == {"v1"}


def test_the_new_repository_page_creates_it_with_its_tag_rules(personas, unique):
    from msr.models import Repository

    alice = _page(personas["alice"].user)
    assert "acme" in alice.get("/repositories/new/").content.decode()
    created = alice.post("/repositories/new/", {
        "namespace": "acme", "name": f"page-rules-{unique}", "visibility": "private",
        "immutable_tag_patterns": "release-*", "tag_limit": "10"})
    assert created.status_code == 302, created.content.decode()
    found = Repository.objects.get(namespace__name="acme", name=f"page-rules-{unique}")
    try:
        assert (found.immutable_tags, found.immutable_tag_patterns, found.tag_limit) == (False, ["release-*"], 10)
        again = alice.post("/repositories/new/", {"namespace": "acme", "name": f"page-rules-{unique}",
                                                  "visibility": "private", "tag_limit": "0"})
        assert again.status_code == 400
        assert "A repository with this name exists." in again.content.decode()
    finally:
        found.delete()


def test_the_new_repository_page_explains_a_bad_name_and_offers_only_writable_namespaces(personas):
    bob = _page(personas["bob"].user)
    refused = bob.post("/repositories/new/", {"namespace": "acme", "name": "x", "visibility": "private",
                                              "tag_limit": "0"})
    assert refused.status_code == 400  # bob may not create in acme: not a choice
    assert "Select a valid choice." in refused.content.decode()
    bad = _page(personas["alice"].user).post("/repositories/new/", {
        "namespace": "acme", "name": "Bad Name", "visibility": "private", "tag_limit": "0"})
    assert bad.status_code == 400
    assert 'id="id_name_error"' in bad.content.decode()


# -- real clients against `msr serve` -------------------------------------------------------

def _host(msr: str) -> str:
    return msr.removeprefix("http://")


def _immutable_repository(name: str, **rules):
    from accounts.models import Namespace
    from msr.models import Repository

    namespace, _, rest = name.partition("/")
    return Repository.objects.create(namespace=Namespace.objects.get(name=namespace), name=rest,
                                     **(rules or {"immutable_tags": True}))


def _refusal(name: str, tag: str = "latest") -> str:
    return f"tag={tag} cannot be overwritten because {name} is an immutable repository"


def _digest_of_tag(msr, personas, name, tag) -> str:
    response = Registry(msr, "alice", personas["alice"].token).request(
        "HEAD", f"/v2/{name}/manifests/{tag}", scope=f"repository:{name}:pull",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                           "application/vnd.docker.distribution.manifest.v2+json"})
    assert response.status_code == 200, response.text
    return response.headers["Docker-Content-Digest"]


def _skopeo_copy(personas, source, reference, check=True):
    return run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", f"alice:{personas['alice'].token}",
                f"oci:{source}:v1", f"docker://{reference}"], check=check)


def test_skopeo_copy_over_an_immutable_tag_is_refused_with_the_message(msr, personas, unique, tmp_path):
    need("skopeo")
    name = f"acme/immutable-skopeo-{unique}"
    _immutable_repository(name)
    first, second = tmp_path / "first", tmp_path / "second"
    digest = make_image_layout(first, layer_sizes=(2000, 3000))
    make_image_layout(second, layer_sizes=(4000,))
    reference = f"{_host(msr)}/{name}:latest"
    _skopeo_copy(personas, first, reference)
    _skopeo_copy(personas, first, reference)  # the same digest again: accepted

    refused = _skopeo_copy(personas, second, reference, check=False)
    assert refused.returncode != 0
    assert _refusal(name) in refused.stderr, refused.stderr
    assert "denied" in refused.stderr
    assert _digest_of_tag(msr, personas, name, "latest") == digest
    back = tmp_path / "back"
    run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", f"alice:{personas['alice'].token}",
         f"docker://{reference}", f"oci:{back}:v1"])
    assert json.loads((back / "index.json").read_text())["manifests"][0]["digest"] == digest


def test_podman_push_over_an_immutable_tag_is_refused_with_the_message(msr, personas, unique, tmp_path):
    need("podman")
    need("skopeo")
    from tests.test_clients import _podman

    host, name = _host(msr), f"acme/immutable-podman-{unique}"
    _immutable_repository(name, immutable_tag_patterns=["release-*"])
    first, second = tmp_path / "first", tmp_path / "second"
    digest = make_image_layout(first, layer_sizes=(2000,))
    make_image_layout(second, layer_sizes=(5000,))
    _skopeo_copy(personas, first, f"{host}/{name}:release-1")
    _skopeo_copy(personas, second, f"{host}/{name}:dev")
    auth = str(tmp_path / "podman-auth.json")
    _podman(tmp_path, "login", "--tls-verify=false", "--authfile", auth, "-u", "alice",
            "-p", personas["alice"].token, host)
    _podman(tmp_path, "pull", "--tls-verify=false", "--authfile", auth, f"{host}/{name}:dev")
    _podman(tmp_path, "tag", f"{host}/{name}:dev", f"{host}/{name}:release-1", f"{host}/{name}:dev-2")

    refused = _podman(tmp_path, "push", "--tls-verify=false", "--authfile", auth, f"{host}/{name}:release-1",
                      check=False)
    assert refused.returncode != 0
    assert (f"tag=release-1 cannot be overwritten because it matches the immutable tag rule release-* of {name}"
            in refused.stderr), refused.stderr
    assert _digest_of_tag(msr, personas, name, "release-1") == digest
    # A tag the rule does not cover moves freely.
    _podman(tmp_path, "push", "--tls-verify=false", "--authfile", auth, f"{host}/{name}:dev-2")


def test_docker_push_over_an_immutable_tag_is_refused_with_the_message(dockerd, msr, personas, unique, tmp_path):
    from tests.test_docker_cli import _inspect, _login, _push, build_image

    host, name = _host(msr), f"acme/immutable-docker-{unique}"
    _immutable_repository(name)
    image = f"{host}/{name}:latest"
    _login(dockerd, host, "alice", "alice-password")
    first = build_image(dockerd, tmp_path, image)
    digest = _push(dockerd, image)
    assert _push(dockerd, image) == digest  # docker pushing the same image again: accepted

    build_image(dockerd, tmp_path, image)  # another image under the same name
    refused = dockerd.docker("push", image, check=False)
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert f"denied: {_refusal(name)}" in output, output
    assert _digest_of_tag(msr, personas, name, "latest") == digest

    dockerd.docker("rmi", image)
    dockerd.docker("pull", image)
    assert _inspect(dockerd, image)["Id"] == first["id"]


def test_deleting_an_immutable_tag_over_v2_is_refused_except_for_a_system_admin(msr, personas, unique):
    name = f"acme/immutable-delete-{unique}"
    _immutable_repository(name)
    alice, admin = (Registry(msr, p, personas[p].token) for p in ("alice", "admin"))
    digest, pushed = alice.push_image(name, "v1")
    assert pushed.status_code == 201, pushed.text
    for reference in ("v1", digest):
        refused = alice.request("DELETE", f"/v2/{name}/manifests/{reference}", scope=f"repository:{name}:delete")
        assert refused.status_code == 403, refused.text
        assert refused.json()["errors"][0]["code"] == "DENIED"
        assert "tag=v1 cannot be deleted because" in refused.json()["errors"][0]["message"]
    deleted = admin.request("DELETE", f"/v2/{name}/manifests/v1", scope=f"repository:{name}:delete")
    assert deleted.status_code == 202, deleted.text


def test_concurrent_pushes_never_exceed_the_tag_limit_nor_move_an_immutable_tag(msr, personas, unique):
    name = f"acme/limit-race-{unique}"
    repository = _immutable_repository(name, tag_limit=3, immutable_tag_patterns=["fixed"])
    alice = Registry(msr, "alice", personas["alice"].token)
    results: dict[str, int] = {}

    def push(tag, n):
        digest, response = alice.push_image(name, tag, layers=(f"{unique}-{n}".encode(),))
        results[f"{tag}-{n}"] = (response.status_code, digest)

    threads = [threading.Thread(target=push, args=(f"t{n}", n)) for n in range(8)]
    threads += [threading.Thread(target=push, args=("fixed", 100 + n)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    fixed = [(s, d) for key, (s, d) in results.items() if key.startswith("fixed-")]
    winners = [d for s, d in fixed if s == 201]
    # One "fixed" push created the immutable tag; the others, with other digests, were
    # refused; the limit removed older t-tags (never "fixed") to make room for new ones.
    assert len(winners) == 1, fixed
    assert all(s == 403 for s, _ in fixed if _ not in winners)
    assert all(s == 201 for key, (s, _) in results.items() if key.startswith("t")), results
    tags = dict(repository.tags.values_list("name", "manifest__digest"))
    assert len(tags) == 3 and tags["fixed"] == winners[0], tags


def test_a_promotion_into_an_immutable_target_fails_cleanly(msr_on_redis, personas, unique):
    import requests

    source, target = f"acme/promote-from-{unique}", f"acme/promote-to-{unique}"
    _immutable_repository(source, immutable_tags=False)
    _immutable_repository(target)
    alice = Registry(msr_on_redis, "alice", personas["alice"].token)
    kept, response = alice.push_image(target, "v1", layers=(f"kept-{unique}".encode(),))
    assert response.status_code == 201, response.text
    api = requests.Session()
    api.auth = ("alice", personas["alice"].token)
    policy = api.post(f"{msr_on_redis}/api/v0/repositories/{source}/promotionPolicies", timeout=30, json={
        "enabled": True, "rules": [], "targetRepository": target, "tagTemplate": "%n"})
    assert policy.status_code == 201, policy.text

    promoted, response = alice.push_image(source, "v1", layers=(f"new-{unique}".encode(),))
    assert response.status_code == 201, response.text

    def failed_job():
        jobs = api.get(f"{msr_on_redis}/api/v0/jobs?policy={policy.json()['id']}", timeout=30).json()["results"]
        return next((j for j in jobs if j["status"] in ("failed", "done")), None)

    job = wait_for(failed_job, timeout=90, what="the promotion job to end")
    assert job["status"] == "failed", job
    assert _refusal(target, "v1") in job["error"], job
    assert _digest_of_tag(msr_on_redis, personas, target, "v1") == kept
    from msr.models import Manifest

    assert not Manifest.objects.filter(repository__name=target.partition("/")[2], digest=promoted).exists()

