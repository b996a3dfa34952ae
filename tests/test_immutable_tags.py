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
