"""The permission decision (accounts/permissions.py `repository_actions`) as a table:
persona x repository visibility -> the actions allowed, in-process on a rolled-back
database. Every entry point (token scopes, REST API, UI, cache grants, policies) asks
this one function; tests/test_permission_matrix.py checks the same rules through them."""

import uuid

import pytest
from django.contrib.auth.models import AnonymousUser

from accounts.permissions import repository_actions

ALL = {"pull", "push", "delete", "admin"}
RW = {"pull", "push", "delete"}
R = {"pull"}
NOTHING = set()

# persona -> (actions on a public repository of acme, on a private one)
ORGANIZATION_TABLE = {
    "anonymous": (R, NOTHING),
    "org-owner": (ALL, ALL),
    "team-read-only": (R, R),
    "team-read-write": (RW, RW),
    "team-admin": (ALL, ALL),
    "member-without-team": (R, NOTHING),
    "other-tenant": (R, NOTHING),  # owner of another organization
    "system-admin": (ALL, ALL),
    "inactive-team-admin": (R, NOTHING),  # deactivated: no more than anonymous
}
# persona -> (actions on a public repository in the owner's own namespace, on a private one)
PERSONAL_TABLE = {
    "anonymous": (R, NOTHING),
    "owner": (ALL, ALL),
    "org-owner": (R, NOTHING),  # owning an organization gives nothing in a user's namespace
    "other-tenant": (R, NOTHING),
    "system-admin": (ALL, ALL),
    "inactive-owner": (R, NOTHING),
}


@pytest.fixture
def world(db):
    """acme (owned by org-owner) with teams read-only/read-write/admin granted on its two
    repositories, globex (owned by other-tenant), and owner's own namespace with two
    repositories. Names are unique: the shared database may hold the suite's personas."""
    from accounts.models import Namespace
    from accounts.services import (add_member, add_team_member, create_organization, create_team,
                                   create_user, set_active, set_team_access)
    from msr.models import Repository

    suffix = uuid.uuid4().hex[:8]
    users = {}
    for persona in ["org-owner", "team-read-only", "team-read-write", "team-admin", "member-without-team",
                    "other-tenant", "system-admin", "inactive-team-admin", "owner", "inactive-owner"]:
        users[persona] = create_user(f"{persona}-{suffix}", is_admin=persona == "system-admin")
    users["anonymous"] = AnonymousUser()

    acme = create_organization(f"acme-{suffix}", owner=users["org-owner"])
    create_organization(f"globex-{suffix}", owner=users["other-tenant"])
    add_member(acme, users["member-without-team"])
    org_repositories = {visibility: Repository.objects.create(namespace=acme, name=f"app-{visibility}",
                                                              visibility=visibility)
                        for visibility in ("public", "private")}
    for persona, level in [("team-read-only", "read-only"), ("team-read-write", "read-write"),
                           ("team-admin", "admin"), ("inactive-team-admin", "admin")]:
        add_member(acme, users[persona])
        team = create_team(acme, f"team-{level}-{persona}")
        add_team_member(team, users[persona])
        for repository in org_repositories.values():
            set_team_access(team, repository, level)

    personal = {}
    for persona in ("owner", "inactive-owner"):
        namespace = Namespace.objects.get(user=users[persona])
        personal[persona] = {visibility: Repository.objects.create(namespace=namespace, name=f"mine-{visibility}",
                                                                   visibility=visibility)
                             for visibility in ("public", "private")}
    for persona in ("inactive-team-admin", "inactive-owner"):
        set_active(users[persona], False)
        users[persona].refresh_from_db()
    return users, acme, org_repositories, personal


def _check(actual, expected, persona, visibility):
    for action in sorted(ALL):
        assert (action in actual) == (action in expected), \
            f"{persona} on a {visibility} repository: {action} {'allowed' if action in actual else 'refused'}"


@pytest.mark.parametrize("visibility", ["public", "private"])
@pytest.mark.parametrize("persona", list(ORGANIZATION_TABLE))
def test_actions_on_an_organization_repository_follow_the_table(world, persona, visibility):
    users, acme, repositories, _ = world
    expected = ORGANIZATION_TABLE[persona][visibility == "private"]
    _check(repository_actions(users[persona], acme, repositories[visibility]), expected, persona, visibility)


@pytest.mark.parametrize("visibility", ["public", "private"])
@pytest.mark.parametrize("persona", list(PERSONAL_TABLE))
def test_actions_on_a_personal_repository_follow_the_table(world, persona, visibility):
    users, _, _, personal = world
    repository = personal["inactive-owner" if persona == "inactive-owner" else "owner"][visibility]
    expected = PERSONAL_TABLE[persona][visibility == "private"]
    _check(repository_actions(users[persona], repository.namespace, repository), expected, persona, visibility)


def test_none_as_the_user_is_anonymous(world):
    _, acme, repositories, _ = world
    assert repository_actions(None, acme, repositories["public"]) == {"pull"}
    assert repository_actions(None, acme, repositories["private"]) == set()


@pytest.mark.parametrize("persona,may_create", [
    ("org-owner", True), ("team-admin", False), ("team-read-write", False), ("other-tenant", False),
    ("system-admin", True), ("anonymous", False),
])
def test_creating_a_repository_in_an_organization_takes_an_owner_or_admin_on_the_organization(
        world, persona, may_create):
    """A repository that does not exist yet: push means "may create it". Team grants on
    other repositories of the organization do not count."""
    users, acme, _, _ = world
    assert ("push" in repository_actions(users[persona], acme, None)) == may_create


def test_a_namespace_that_does_not_exist_allows_nothing(world):
    users, _, _, _ = world
    assert repository_actions(users["system-admin"], None, None) == set()
