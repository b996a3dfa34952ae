"""Users, organizations, teams and personal access tokens.

Every repository lives in a *namespace*: either a user's own (named after the user) or an
organization's. Organizations have members; some members are owners. Teams belong to an
organization and are backed by a Django group, so that django-guardian object
permissions granted to the team apply to its members.
"""

import hashlib
import secrets

from django.contrib.auth.models import AbstractUser, Group
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
    """A person (or a CI robot) who logs in. System admins have is_superuser."""

    full_name = models.CharField(max_length=200, blank=True)


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
        permissions = [
            ("pull_repository", "Pull from the organization's repositories"),
            ("push_repository", "Push to the organization's repositories"),
            ("delete_repository", "Delete content in the organization's repositories"),
            ("admin_repository", "Administer the organization's repositories"),
        ]
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
        constraints = [
            models.UniqueConstraint(fields=["organization", "user"], name="unique_org_member")
        ]

    def __str__(self):
        return f"{self.user} in {self.organization}{' (owner)' if self.is_owner else ''}"


class Team(models.Model):
    """A group of an organization's members that is granted access to repositories."""

    organization = models.ForeignKey(
        Namespace, on_delete=models.CASCADE, related_name="teams",
        limit_choices_to={"is_org": True},
    )
    name = models.CharField(max_length=100, validators=[namespace_validator])
    description = models.CharField(max_length=500, blank=True)
    # Membership and guardian group permissions live on this group.
    group = models.OneToOneField(Group, on_delete=models.PROTECT, related_name="team")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="unique_team_per_org")
        ]

    def __str__(self):
        return f"{self.organization}/{self.name}"


class AccessTokenQuerySet(models.QuerySet):
    def active(self):
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class AccessToken(models.Model):
    """A personal access token (used as a password) or a login refresh token.

    Only the SHA-256 of the secret is stored: the secret is 32 random bytes, so a fast
    hash is enough and lookups stay one indexed query.
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
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = AccessTokenQuerySet.as_manager()

    def __str__(self):
        return f"{self.user} {self.kind} {self.hint}…"

    @staticmethod
    def hash(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    @classmethod
    def issue(cls, user, kind=PERSONAL, name="", expires_at=None) -> tuple["AccessToken", str]:
        """Create a token and return it with its secret; the secret is not kept."""
        secret = cls.PREFIXES[kind] + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, kind=kind, name=name, token_hash=cls.hash(secret),
            hint=secret[: len(cls.PREFIXES[kind]) + 4], expires_at=expires_at,
        )
        return token, secret

    @classmethod
    def find(cls, secret: str, kind: str) -> "AccessToken | None":
        if not secret.startswith(cls.PREFIXES[kind]):
            return None
        return (
            cls.objects.active().select_related("user")
            .filter(kind=kind, token_hash=cls.hash(secret), user__is_active=True).first()
        )
