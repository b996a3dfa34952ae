"""Lookups shared by the REST API and the web UI. Every permission question goes to
accounts.permissions.repository_actions; a repository the caller may not read is
answered 404, exactly like one that does not exist."""

from django.http import Http404
from django.core.exceptions import PermissionDenied

from accounts.models import Namespace, OrganizationMembership, Team, User
from accounts.permissions import ADMIN, PULL, repository_actions
from msr.models import Repository


def namespace_or_404(name: str) -> Namespace:
    namespace = Namespace.objects.filter(name=name).select_related("user").first()
    if namespace is None:
        raise Http404(f"no account named {name!r}")
    return namespace


def organization_or_404(name: str) -> Namespace:
    namespace = namespace_or_404(name)
    if not namespace.is_org:
        raise Http404(f"{name!r} is not an organization")
    return namespace


def team_or_404(org: Namespace, name: str) -> Team:
    team = org.teams.filter(name=name).select_related("group").first()
    if team is None:
        raise Http404(f"no team {name!r} in {org.name!r}")
    return team


def user_or_404(name: str) -> User:
    user = User.objects.filter(username=name).first()
    if user is None:
        raise Http404(f"no user named {name!r}")
    return user


def is_org_owner(user, org: Namespace) -> bool:
    return user.is_superuser or OrganizationMembership.objects.filter(
        organization=org, user=user, is_owner=True).exists()


def is_org_member(user, org: Namespace) -> bool:
    return user.is_superuser or OrganizationMembership.objects.filter(organization=org, user=user).exists()


def administers_namespace(user, namespace: Namespace) -> bool:
    """Administering a namespace (its settings, webhooks): the user themself, an
    organization owner, or a system admin; always an active user."""
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    if namespace.is_org:
        return is_org_owner(user, namespace)
    return namespace.user_id == user.pk


def require_namespace_admin(user, namespace: Namespace) -> None:
    if not administers_namespace(user, namespace):
        raise PermissionDenied("You must administer this namespace.")


def repository_for(user, namespace_name: str, name: str, action: str = PULL) -> Repository:
    namespace = Namespace.objects.filter(name=namespace_name).first()
    repository = None
    if namespace is not None:
        repository = Repository.objects.select_related("namespace").filter(
            namespace=namespace, name=name).first()
    actions = repository_actions(user, namespace, repository)
    if repository is None or PULL not in actions:
        raise Http404("no such repository")
    if action not in actions:
        raise PermissionDenied(f"You need {action} access to {repository.full_name}.")
    return repository


def may_create_in(user, namespace: Namespace) -> bool:
    from accounts.permissions import PUSH

    return PUSH in repository_actions(user, namespace, None)


def require_repository_admin(user, repository: Repository) -> None:
    if ADMIN not in repository_actions(user, repository.namespace, repository):
        raise PermissionDenied(f"You need admin access to {repository.full_name}.")


def team_access_levels(org: Namespace, obj) -> list[tuple[Team, str]]:
    """(team, access level) of each of the organization's teams with access to `obj`
    (a repository, or the organization for organization-wide access)."""
    from guardian.shortcuts import get_perms

    from accounts.permissions import access_level_for

    rows = []
    for team in org.teams.select_related("group").order_by("name"):
        level = access_level_for({codename.split("_")[0] for codename in get_perms(team.group, obj)})
        if level:
            rows.append((team, level))
    return rows
