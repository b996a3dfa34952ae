"""Team bindings without a directory or a provider: the single sign-on groups rule, a
bound team refusing hand edits, binding validation and one sync at a time (the syncs
themselves run against slapd in tests/test_directory_sync.py)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import services, teamsync
from accounts.directory_sync import queue, valid_binding
from accounts.models import DirectorySync, OrganizationMembership, Team


@pytest.fixture
def org(db):
    return services.create_organization("corp")


def _team(org, name, kind="", value=""):
    team = services.create_team(org, name)
    team.sync_kind, team.sync_value = kind, value
    team.save()
    return team


def _members(team):
    return set(team.group.user_set.values_list("username", flat=True))


def test_sso_groups_put_a_person_in_exactly_the_bound_teams_of_their_groups(org):
    devs = _team(org, "devs", Team.SSO_GROUP, "developers")
    ops = _team(org, "ops", Team.SSO_GROUP, "operators")
    manual = _team(org, "manual")
    sam = services.create_user("sam")
    services.add_team_member(manual, sam)

    assert teamsync.apply_sso_groups(sam, ["developers", "unrelated"]) == {"joined": ["corp/devs"], "left": []}
    assert _members(devs) == {"sam"} and _members(ops) == set()
    assert OrganizationMembership.objects.filter(organization=org, user=sam).exists()

    assert teamsync.apply_sso_groups(sam, ["operators"]) == {"joined": ["corp/ops"], "left": ["corp/devs"]}
    assert _members(devs) == set() and _members(ops) == {"sam"}
    assert _members(manual) == {"sam"}  # a team managed in MSR is not the provider's to change
    assert teamsync.apply_sso_groups(sam, []) == {"joined": [], "left": ["corp/ops"]}


def test_a_bound_team_refuses_hand_edits_and_says_where_members_come_from(org):
    team = _team(org, "devs", Team.LDAP_GROUP, "cn=developers,ou=groups,dc=example,dc=org")
    with pytest.raises(teamsync.BoundTeam, match="come from the LDAP group cn=developers,ou=groups"):
        teamsync.refuse_if_bound(team)
    teamsync.refuse_if_bound(_team(org, "manual"))


def test_set_members_makes_a_team_exactly_the_given_people(org):
    team = _team(org, "devs", Team.LDAP_FILTER, "(department=dev)")
    a, b, c = (services.create_user(n) for n in ("ann", "ben", "cat"))
    services.add_team_member(team, a)
    services.add_team_member(team, b)
    assert teamsync.set_members(team, [b, c]) == (["cat"], ["ann"])
    assert _members(team) == {"ben", "cat"}


@pytest.mark.parametrize("kind, value, problem", [
    (Team.LDAP_GROUP, "cn=developers,ou=groups,dc=example,dc=org", None),
    (Team.LDAP_GROUP, "developers", "is not a distinguished name"),
    (Team.LDAP_GROUP, "", "is not a distinguished name"),
    (Team.LDAP_FILTER, "(&(objectClass=person)(department=dev))", None),
    (Team.LDAP_FILTER, "(uid=a", "is not an LDAP filter"),
    (Team.LDAP_FILTER, "uid=a", "is not an LDAP filter"),
    (Team.LDAP_FILTER, "(a))(", "is not an LDAP filter"),
])
def test_bindings_are_checked_before_they_are_saved(kind, value, problem):
    found = valid_binding(kind, value)
    assert (found is None) if problem is None else (problem in found), found


def test_one_sync_at_a_time_but_a_lost_run_does_not_block_forever(db):
    first, created = queue("admin")
    assert created
    again, created = queue("")
    assert again.pk == first.pk and not created
    DirectorySync.objects.filter(pk=first.pk).update(status=DirectorySync.RUNNING,
                                                     created_at=timezone.now() - timedelta(hours=2))
    later, created = queue("")
    assert created and later.pk != first.pk


def test_a_runs_summary_reads_as_a_sentence():
    run = DirectorySync(summary={"teams": 2, "added": 1, "removed": 0, "created": 1, "deactivated": 0,
                                 "failedTeams": 1})
    assert run.summary_text == ("2 teams synced, 1 members added, 0 members removed, 1 accounts created, "
                                "0 users deactivated, 1 teams not synced")
