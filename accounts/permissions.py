"""The one permission decision of MSR.

Every entry point (token service, REST API, web UI, cache grants, policies) asks
`repository_actions()` what a user may do on a repository, and nothing else decides.
The rules:

- system admins (is_superuser) may do everything everywhere;
- a user may do everything in their own namespace, including create repositories;
- organization owners may do everything in the organization's namespace;
- team members get what their teams were granted, on one repository or on the whole
  organization (read-only: pull; read-write: pull, push, delete; admin: all of these
  plus administering the repository); creating a repository in an organization takes
  admin on the organization;
- anyone, anonymous included, may pull a public repository.
"""

from guardian.core import ObjectPermissionChecker

PULL, PUSH, DELETE, ADMIN = "pull", "push", "delete", "admin"
ALL_ACTIONS = frozenset({PULL, PUSH, DELETE, ADMIN})
NONE = frozenset()

ACCESS_LEVELS = {
    "read-only": frozenset({PULL}),
    "read-write": frozenset({PULL, PUSH, DELETE}),
    "admin": ALL_ACTIONS,
}
PERMISSION_CODENAMES = {action: f"{action}_repository" for action in ALL_ACTIONS}
_ACTION_BY_CODENAME = {codename: action for action, codename in PERMISSION_CODENAMES.items()}


def access_level_for(actions) -> str | None:
    """The named access level that a set of actions amounts to (None if none)."""
    actions = set(actions)
    for level in ("admin", "read-write", "read-only"):
        if ACCESS_LEVELS[level] <= actions:
            return level
    return None


def _granted_actions(checker, obj) -> set[str]:
    return {_ACTION_BY_CODENAME[c] for c in checker.get_perms(obj) if c in _ACTION_BY_CODENAME}


def repository_actions(user, namespace, repository=None) -> frozenset[str]:
    """What `user` may do on `repository` in `namespace`.

    `repository` is None when the repository does not exist (yet): the answer then says
    whether the user may create it by pushing. `namespace` is None when no such namespace
    exists: nobody may do anything there.
    """
    if namespace is None:
        return NONE
    public = repository is not None and repository.visibility == "public"
    base = {PULL} if public else set()
    if user is None or not user.is_authenticated or not user.is_active:
        return frozenset(base)
    if user.is_superuser:
        return ALL_ACTIONS
    if not namespace.is_org:
        return ALL_ACTIONS if namespace.user_id == user.pk else frozenset(base)
    membership = namespace.memberships.filter(user=user).first()
    if membership is None:
        return frozenset(base)
    if membership.is_owner:
        return ALL_ACTIONS
    checker = ObjectPermissionChecker(user)
    org_wide = _granted_actions(checker, namespace)
    actions = base | org_wide
    if repository is not None:
        actions |= _granted_actions(checker, repository)
    elif ADMIN not in org_wide:
        # Only organization owners and teams with admin on the organization create
        # repositories in it.
        actions.discard(PUSH)
        actions.discard(DELETE)
    return frozenset(actions)


def readable_repositories(user, queryset):
    """Narrow a repository queryset to those `user` may pull: the same rules as
    `repository_actions`, expressed as one query for listings (catalog, API, UI)."""
    from django.db.models import Q
    from guardian.shortcuts import get_objects_for_user

    from accounts.models import Namespace

    public = Q(visibility="public")
    if user is None or not user.is_authenticated or not user.is_active:
        return queryset.filter(public)
    if user.is_superuser:
        return queryset
    member_of = Namespace.objects.filter(memberships__user=user)
    owned_orgs = member_of.filter(memberships__user=user, memberships__is_owner=True)
    org_wide = get_objects_for_user(
        user, "accounts.pull_repository", klass=member_of, accept_global_perms=False,
        with_superuser=False,
    )
    repo_perm = f"{queryset.model._meta.app_label}.pull_repository"
    granted = get_objects_for_user(
        user, repo_perm, klass=queryset.model.objects.filter(namespace__in=member_of),
        accept_global_perms=False, with_superuser=False,
    )
    return queryset.filter(
        public
        | Q(namespace__user=user)
        | Q(namespace__in=owned_orgs.values("pk"))
        | Q(namespace__in=org_wide.values("pk"))
        | Q(pk__in=granted.values("pk"))
    )
