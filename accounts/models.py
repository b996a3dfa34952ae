"""Users, organizations, teams and personal access tokens.

Every repository lives in a *namespace*: either a user's own (named after the user) or an
organization's. Organizations have members; some members are owners. Teams belong to an
organization and are backed by a Django group, so that django-guardian object
permissions granted to the team apply to its members.
"""

import hashlib
import secrets

from django.contrib.auth.models import AbstractUser, Group
from django.contrib.sessions.base_session import AbstractBaseSession
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

# The first path component of a repository name: the registry's name grammar for one
# component, so that every namespace can appear in `/v2/<namespace>/<repo>`.
NAMESPACE_PATTERN = r"^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$"
namespace_validator = RegexValidator(
    NAMESPACE_PATTERN,
    "Use lowercase letters, digits and single separators (., _, __, -) between them.",
)


class User(AbstractUser):
    """A person (or a CI robot) who logs in. System admins have is_superuser.

    `source` says where the password lives: MSR's own hash (local) or the company
    directory (MSR_LDAP_URL), which alone checks a directory user's password; such a user
    never has a usable local hash (set_password below), so no stale one can sign in."""

    LOCAL, DIRECTORY, SSO = "local", "ldap", "oidc"

    full_name = models.CharField(max_length=200, blank=True)
    source = models.CharField(max_length=5, choices=[(LOCAL, "MSR"), (DIRECTORY, "Company directory"),
                                                     (SSO, "Single sign-on (OpenID Connect)")],
                              default=LOCAL)
    # Who the identity provider says this is, for a single sign-on user: "<issuer> <subject>"
    # (the `sub` claim never changes, while a name or an email may).
    external_id = models.CharField(max_length=500, blank=True, db_index=True)
    # The provider's refresh token from the latest single sign-on, encrypted by MSR
    # (msr/crypto.py), with which MSR asks the provider whether that sign-on still stands
    # before it honours the user's tokens (msr/sso.py `confirm`); when it last asked; when
    # the provider said no (the user's tokens are refused until they sign in again).
    sso_refresh_token = models.TextField(blank=True)
    sso_checked_at = models.DateTimeField(null=True, blank=True)
    sso_ended_at = models.DateTimeField(null=True, blank=True)

    def set_password(self, raw_password):
        if self.source != self.LOCAL:
            self.set_unusable_password()
        else:
            super().set_password(raw_password)


# What a team may do in a repository, granted on one repository or on every repository of
# an organization (django-guardian object permissions, the same codenames on both; read
# by accounts.permissions): (codename, its name on a repository, on an organization).
REPOSITORY_PERMISSIONS = (
    ("pull_repository", "Pull", "Pull from the organization's repositories"),
    ("push_repository", "Push", "Push to the organization's repositories"),
    ("delete_repository", "Delete content", "Delete content in the organization's repositories"),
    ("admin_repository", "Administer", "Administer the organization's repositories"),
)


class Namespace(models.Model):
    """The owner of repositories: one per user, and one per organization."""

    name = models.CharField(max_length=100, unique=True, validators=[namespace_validator])
    is_org = models.BooleanField(default=False)
    # Set for a user's own namespace; empty for an organization.
    user = models.OneToOneField(
        User, null=True, blank=True, on_delete=models.CASCADE, related_name="namespace"
    )
    full_name = models.CharField(max_length=200, blank=True)
    # Visibility of repositories created by a push into this namespace.
    default_visibility = models.CharField(
        max_length=7, choices=[("public", "Public"), ("private", "Private")], default="private")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        default_permissions = ()
        # Access a team holds on every repository of an organization (MSR's
        # "namespace team access"); the same codenames as on a repository.
        permissions = [(codename, on_organization) for codename, _, on_organization in REPOSITORY_PERMISSIONS]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(is_org=True, user__isnull=True)
                | models.Q(is_org=False, user__isnull=False),
                name="namespace_is_user_xor_org",
            )
        ]

    def __str__(self):
        return self.name


class OrganizationMembership(models.Model):
    """A user's membership in an organization; owners administer it entirely."""

    organization = models.ForeignKey(
        Namespace, on_delete=models.CASCADE, related_name="memberships",
        limit_choices_to={"is_org": True},
    )
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    is_owner = models.BooleanField(default=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "user"], name="unique_org_member")]

    def __str__(self):
        return f"{self.user} in {self.organization}{' (owner)' if self.is_owner else ''}"


class Team(models.Model):
    """A group of an organization's members that is granted access to repositories.

    Its members are managed in MSR, or bound to the company's identity (`sync_kind` and
    `sync_value`, accounts/teamsync.py): the members of an LDAP group (its DN), the users an
    LDAP filter finds, or the people whose OpenID Connect groups claim holds a name. A bound
    team's members change only through the binding."""

    MANUAL, LDAP_GROUP, LDAP_FILTER, SSO_GROUP = "", "ldap-group", "ldap-filter", "oidc-group"
    SYNC_KINDS = [(MANUAL, "Managed in MSR"), (LDAP_GROUP, "Members of an LDAP group (its DN)"),
                  (LDAP_FILTER, "Directory users matching an LDAP filter"),
                  (SSO_GROUP, "A group in the single sign-on groups claim")]

    organization = models.ForeignKey(
        Namespace, on_delete=models.CASCADE, related_name="teams",
        limit_choices_to={"is_org": True},
    )
    name = models.CharField(max_length=100, validators=[namespace_validator])
    description = models.CharField(max_length=500, blank=True)
    # Membership and guardian group permissions live on this group.
    group = models.OneToOneField(Group, on_delete=models.PROTECT, related_name="team")
    sync_kind = models.CharField(max_length=12, choices=SYNC_KINDS, default=MANUAL, blank=True)
    sync_value = models.CharField(max_length=1000, blank=True)
    # The last directory sync that looked at this team: when, and what it did or why it failed.
    synced_at = models.DateTimeField(null=True, blank=True)
    sync_result = models.CharField(max_length=1000, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="unique_team_per_org")]

    def __str__(self):
        return f"{self.organization}/{self.name}"

    @property
    def is_bound(self) -> bool:
        return bool(self.sync_kind)

    @property
    def binding(self) -> str:
        """Where the members come from, in words: "the LDAP group cn=developers,…"."""
        source = {self.LDAP_GROUP: "the LDAP group", self.LDAP_FILTER: "the LDAP filter",
                  self.SSO_GROUP: "the single sign-on group"}.get(self.sync_kind)
        return f"{source} {self.sync_value}" if source else "MSR"


class DirectorySync(models.Model):
    """One run of the team sync with the company directory (accounts/teamsync.py): queued
    by the schedule (MSR_LDAP_SYNC_INTERVAL) or by an administrator, with a log a person can
    read and what it changed. A run that cannot read the directory changes nothing."""

    WAITING, RUNNING, DONE, FAILED = "waiting", "running", "done", "failed"
    STATUSES = [(s, s) for s in (WAITING, RUNNING, DONE, FAILED)]

    status = models.CharField(max_length=8, choices=STATUSES, default=WAITING, db_index=True)
    triggered_by = models.CharField(max_length=150, blank=True, help_text="a user, or empty for the schedule")
    # {"teams": n, "added": n, "removed": n, "created": n, "deactivated": n}
    summary = models.JSONField(default=dict, blank=True)
    error = models.CharField(max_length=1000, blank=True)
    log = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"directory sync {self.pk} ({self.status})"

    @property
    def summary_text(self) -> str:
        words = [("teams", "teams synced"), ("added", "members added"), ("removed", "members removed"),
                 ("created", "accounts created"), ("deactivated", "users deactivated"),
                 ("failedTeams", "teams not synced")]
        return ", ".join(f"{self.summary[key]} {text}" for key, text in words if key in self.summary)


class AccessTokenQuerySet(models.QuerySet):
    def active(self):
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


# What a personal access token may be used for. A token without `api` is refused by the
# REST API; the registry scopes cap what the token service grants with it.
SCOPE_PULL, SCOPE_PUSH, SCOPE_API = "registry:pull", "registry:push", "api"
TOKEN_SCOPES = (SCOPE_PULL, SCOPE_PUSH, SCOPE_API)
# Registry actions each scope allows (push includes deleting, like read-write access).
SCOPE_ACTIONS = {SCOPE_PULL: frozenset({"pull"}), SCOPE_PUSH: frozenset({"push", "delete"}),
                 SCOPE_API: frozenset()}


class AccessToken(models.Model):
    """A personal access token (used as a password) or a login refresh token.

    Only the SHA-256 of the secret is stored: the secret is 32 random bytes, so a fast
    hash is enough and lookups stay one indexed query.

    A refresh token (what `docker login` keeps) is bound to what created it: the personal
    access token it was obtained with (`parent`: revoking or expiring that one ends it),
    or the password (`password_binding`: changing the password ends it). Deactivating the
    user ends both kinds.
    """

    PERSONAL = "personal"
    REFRESH = "refresh"
    KINDS = [(PERSONAL, "Personal access token"), (REFRESH, "Login refresh token")]
    PREFIXES = {PERSONAL: "msrpat_", REFRESH: "msrrt_"}

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="access_tokens")
    kind = models.CharField(max_length=10, choices=KINDS, default=PERSONAL)
    name = models.CharField(max_length=100, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    # The first characters of the secret, shown in listings so a person can tell tokens apart.
    hint = models.CharField(max_length=16)
    # Space-separated TOKEN_SCOPES (personal access tokens; a refresh token has its parent's).
    scopes = models.CharField(max_length=100, default=" ".join(TOKEN_SCOPES))
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    # For a refresh token obtained with the password: the user's session auth hash then
    # (an HMAC of the password hash), which a new password changes.
    password_binding = models.CharField(max_length=128, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = AccessTokenQuerySet.as_manager()

    def __str__(self):
        return f"{self.user} {self.kind} {self.hint}…"

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(self.scopes.split())

    def registry_actions(self) -> frozenset[str]:
        """The registry actions this token (a refresh token: its parent) may be used for."""
        source = self.parent if self.parent_id else self
        return frozenset().union(*(SCOPE_ACTIONS.get(s, frozenset()) for s in source.scope_set))

    @staticmethod
    def hash(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    @classmethod
    def issue(cls, user, kind=PERSONAL, name="", expires_at=None, *, scopes=TOKEN_SCOPES, parent=None,
              client_ip=None, user_agent="") -> tuple["AccessToken", str]:
        """Create a token and return it with its secret; the secret is not kept. A refresh
        token is bound to `parent` (a personal access token) or, without one, to the
        user's current password."""
        secret = cls.PREFIXES[kind] + secrets.token_urlsafe(32)
        binding = user.get_session_auth_hash() if kind == cls.REFRESH and parent is None else ""
        token = cls.objects.create(
            user=user, kind=kind, name=name, token_hash=cls.hash(secret),
            hint=secret[: len(cls.PREFIXES[kind]) + 4], expires_at=expires_at,
            scopes=" ".join(s for s in TOKEN_SCOPES if s in set(scopes)), parent=parent,
            password_binding=binding, client_ip=client_ip, user_agent=user_agent[:200],
        )
        return token, secret

    @classmethod
    def find(cls, secret: str, kind: str) -> "AccessToken | None":
        if not secret.startswith(cls.PREFIXES[kind]):
            return None
        token = (
            cls.objects.active().select_related("user", "parent")
            .filter(kind=kind, token_hash=cls.hash(secret), user__is_active=True).first()
        )
        if token is None or (kind == cls.REFRESH and not token.binding_holds()):
            return None
        return token

    def binding_holds(self) -> bool:
        """A refresh token still stands on what created it."""
        if self.parent_id is not None:
            parent = self.parent
            return parent.revoked_at is None and (parent.expires_at is None or parent.expires_at > timezone.now())
        return bool(self.password_binding) and secrets.compare_digest(
            self.password_binding, self.user.get_session_auth_hash())


class UserSession(AbstractBaseSession):
    """A web UI session, stored with whose it is (Django's documented way of extending the
    database session engine, accounts/sessions.py), so that users can list their sessions
    and end them, and a password change or deactivation can end all of them."""

    user = models.ForeignKey(User, null=True, blank=True, on_delete=models.CASCADE, related_name="web_sessions")
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(null=True, blank=True)

    @classmethod
    def get_session_store_class(cls):
        from accounts.sessions import SessionStore

        return SessionStore

    @property
    def public_id(self) -> str:
        """Names the session in listings without giving away its key."""
        return hashlib.sha256(self.session_key.encode()).hexdigest()[:16]


class AuthThrottle(models.Model):
    """Failed sign-ins counted per key (an address, an account, an account from one
    address) in a fixed window; a key over its limit is blocked until `blocked_until`
    (accounts/throttle.py). Rows `ok:<account>|<address>` remember where an account last
    signed in successfully (`window_start`), so a flood against an account does not lock
    its owner out of the addresses they use."""

    key = models.CharField(max_length=255, primary_key=True)
    failures = models.PositiveIntegerField(default=0)
    window_start = models.DateTimeField(default=timezone.now)
    blocked_until = models.DateTimeField(null=True, blank=True, db_index=True)
