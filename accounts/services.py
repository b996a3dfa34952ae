"""Operations on accounts used by management commands, the REST API and the UI."""

from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from guardian.shortcuts import assign_perm, remove_perm

from django.utils import timezone

from accounts.models import AccessToken, Namespace, OrganizationMembership, Team, User, UserSession
from accounts.permissions import ACCESS_LEVELS, ALL_ACTIONS, PERMISSION_CODENAMES


class AccountError(Exception):
    """A request that conflicts with existing accounts (a name taken, an unknown team)."""


@transaction.atomic
def create_user(username, password=None, *, is_admin=False, full_name="", email="") -> User:
    """Create a user and the user's own namespace."""
    if Namespace.objects.filter(name=username).exists():
        raise AccountError(f"the name {username!r} is taken")
    Namespace._meta.get_field("name").run_validators(username)
    user = User(username=username, is_superuser=is_admin, is_staff=is_admin,
                full_name=full_name, email=email)
    user.set_password(password) if password else user.set_unusable_password()
    user.save()
    Namespace.objects.create(name=username, user=user, full_name=full_name)
    return user


@transaction.atomic
def create_organization(name, *, owner=None, full_name="") -> Namespace:
    Namespace._meta.get_field("name").run_validators(name)
    try:
        with transaction.atomic():
            org = Namespace.objects.create(name=name, is_org=True, full_name=full_name)
    except IntegrityError:
        raise AccountError(f"the name {name!r} is taken") from None
    if owner is not None:
        OrganizationMembership.objects.create(organization=org, user=owner, is_owner=True)
    return org


def add_member(org: Namespace, user: User, *, is_owner=False) -> OrganizationMembership:
    membership, _ = OrganizationMembership.objects.update_or_create(
        organization=org, user=user, defaults={"is_owner": is_owner}
    )
    return membership


@transaction.atomic
def remove_member(org: Namespace, user: User) -> None:
    for team in org.teams.all():
        team.group.user_set.remove(user)
    OrganizationMembership.objects.filter(organization=org, user=user).delete()


@transaction.atomic
def create_team(org: Namespace, name: str, description="") -> Team:
    if not org.is_org:
        raise AccountError(f"{org.name!r} is a user, not an organization")
    Team._meta.get_field("name").run_validators(name)
    if org.teams.filter(name=name).exists():
        raise AccountError(f"team {name!r} exists in {org.name!r}")
    group = Group.objects.create(name=f"team:{org.pk}:{name}")
    return Team.objects.create(organization=org, name=name, description=description, group=group)


@transaction.atomic
def delete_team(team: Team) -> None:
    group = team.group
    team.delete()
    group.delete()


@transaction.atomic
def add_team_member(team: Team, user: User) -> None:
    """Team members are organization members: joining a team joins the organization."""
    OrganizationMembership.objects.get_or_create(organization=team.organization, user=user)
    team.group.user_set.add(user)


def remove_team_member(team: Team, user: User) -> None:
    team.group.user_set.remove(user)


@transaction.atomic
def set_team_access(team: Team, obj, access_level: str | None) -> None:
    """Grant `team` an access level on a repository, or on its whole organization when
    `obj` is the organization's namespace; None removes the grant."""
    if access_level is not None and access_level not in ACCESS_LEVELS:
        raise AccountError(f"unknown access level {access_level!r}")
    wanted = ACCESS_LEVELS[access_level] if access_level else frozenset()
    for action in ALL_ACTIONS:
        perm = PERMISSION_CODENAMES[action]
        if action in wanted:
            assign_perm(perm, team.group, obj)
        else:
            remove_perm(perm, team.group, obj)


# -- credentials -----------------------------------------------------------------------


def end_sign_ins(user: User, keep_session: str | None = None) -> int:
    """Revoke every refresh token of `user` and end their web sessions (but
    `keep_session`, the session key of the request that asked). Returns how many ended."""
    ended = AccessToken.objects.filter(user=user, kind=AccessToken.REFRESH, revoked_at__isnull=True).update(
        revoked_at=timezone.now())
    sessions = UserSession.objects.filter(user=user)
    if keep_session:
        sessions = sessions.exclude(session_key=keep_session)
    return ended + sessions.delete()[0]


@transaction.atomic
def set_password(user: User, password: str, keep_session: str | None = None) -> None:
    """A new password ends everything signed in with the old one: refresh tokens of
    `docker login` and web sessions (except `keep_session`). Personal access tokens stay:
    they are credentials of their own, revoked one by one."""
    user.set_password(password)
    user.save(update_fields=["password"])
    end_sign_ins(user, keep_session)


@transaction.atomic
def set_active(user: User, active: bool) -> None:
    user.is_active = active
    user.save(update_fields=["is_active"])
    if not active:
        end_sign_ins(user)
