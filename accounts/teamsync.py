"""Team members from the company's identity: teams bound to an LDAP group or filter are
synced from the directory (accounts/directory_sync.py runs it), teams bound to a single
sign-on group follow each person's groups claim when they sign in.

A bound team's members are exactly what its binding says: people added by hand are
removed by the next sync, and the API and UI refuse to change them. Joining a team joins
its organization (accounts.services.add_team_member); leaving the team does not leave the
organization, which grants nothing by itself.
"""

import logging
from collections.abc import Iterable

from django.db import transaction

from accounts import services
from accounts.models import Team, User

log = logging.getLogger(__name__)


class BoundTeam(Exception):
    """A change by hand to the members of a team whose members come from the directory."""

    def __init__(self, team: Team):
        super().__init__(
            f"The members of team {team.name!r} come from {team.binding}; change them there, "
            "or remove the binding first.")


def refuse_if_bound(team: Team) -> None:
    if team.is_bound:
        raise BoundTeam(team)


@transaction.atomic
def set_members(team: Team, wanted: Iterable[User]) -> tuple[list[str], list[str]]:
    """Make the team's members exactly `wanted`; (names added, names removed)."""
    wanted = {user.pk: user for user in wanted}
    present = set(team.group.user_set.values_list("pk", flat=True))
    added = [wanted[pk] for pk in wanted.keys() - present]
    removed = list(User.objects.filter(pk__in=present - wanted.keys()))
    for user in added:
        services.add_team_member(team, user)
    for user in removed:
        services.remove_team_member(team, user)
    return sorted(u.username for u in added), sorted(u.username for u in removed)


@transaction.atomic
def apply_sso_groups(user: User, groups: Iterable[str]) -> dict[str, list[str]]:
    """At a single sign-on: `user` is in every team bound to a group of their groups claim,
    and in no other team bound to a single sign-on group. Returns the teams joined and left
    ("org/team"), for the sign-in's audit event."""
    groups = {str(g) for g in groups}
    joined, left = [], []
    for team in Team.objects.filter(sync_kind=Team.SSO_GROUP).select_related("organization", "group"):
        inside = team.group.user_set.filter(pk=user.pk).exists()
        if team.sync_value in groups and not inside:
            services.add_team_member(team, user)
            joined.append(str(team))
        elif team.sync_value not in groups and inside:
            services.remove_team_member(team, user)
            left.append(str(team))
    if joined or left:
        log.info("single sign-on of %s: joined %s, left %s", user.username, joined or "-", left or "-")
    return {"joined": joined, "left": left}
