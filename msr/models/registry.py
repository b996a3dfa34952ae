"""The registry's content: repositories, blobs, manifests, tags and uploads.

Storage is content-addressed: a blob's bytes are stored once, whatever the number of
repositories that hold it. Which repositories may serve a blob is recorded by
`RepositoryBlob` links, created when a blob is pushed or mounted into a repository: a
blob is never served from a repository that has no link to it, so nobody reads another
private repository's layer by guessing its digest.

Manifests are small documents (at most MAX_MANIFEST_BYTES) and are stored in the database,
byte for byte, with their digest; a tag points at one manifest of its repository.
"""

import uuid
from fnmatch import fnmatchcase

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import REPOSITORY_PERMISSIONS, Namespace


class Repository(models.Model):
    """A named collection of manifests and tags in a namespace.

    Tag rules (issue 17): a tag is *immutable* when `immutable_tags` is set (every tag)
    or when its name matches one of `immutable_tag_patterns` (shell globs, `release-*`):
    once it exists it never points at another digest and only a system admin deletes
    it. The rules add up: a pattern makes tags immutable, it never exempts one. With
    `tag_limit` > 0, a push that adds a tag beyond the limit removes the tags pushed
    longest ago that no rule protects (msr/services.py)."""

    PUBLIC, PRIVATE = "public", "private"
    VISIBILITIES = [(PUBLIC, "Public"), (PRIVATE, "Private")]

    namespace = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="repositories")
    # The path below the namespace: "app" or "team/app" (the registry name grammar).
    name = models.CharField(max_length=255)
    visibility = models.CharField(max_length=7, choices=VISIBILITIES, default=PRIVATE)
    short_description = models.CharField(max_length=140, blank=True)
    long_description = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    immutable_tags = models.BooleanField(default=False)
    immutable_tag_patterns = models.JSONField(default=list, blank=True)
    tag_limit = models.PositiveIntegerField(default=0)  # 0: no limit

    class Meta:
        verbose_name_plural = "repositories"
        default_permissions = ()
        # Object permissions granted to teams (django-guardian); see accounts.permissions.
        permissions = [(codename, on_repository) for codename, on_repository, _ in REPOSITORY_PERMISSIONS]
        constraints = [models.UniqueConstraint(fields=["namespace", "name"], name="unique_repository_name")]

    def __str__(self):
        return self.full_name

    @property
    def full_name(self) -> str:
        return f"{self.namespace.name}/{self.name}"

    def immutability_rule(self, tag: str) -> str | None:
        """What makes `tag` immutable here: "repository", the first matching pattern, or
        None when the tag may move."""
        if self.immutable_tags:
            return "repository"
        return next((p for p in self.immutable_tag_patterns if fnmatchcase(tag, p)), None)


class Blob(models.Model):
    """Bytes in the content-addressed store, known by digest (`sha256:<hex>`)."""

    digest = models.CharField(max_length=150, primary_key=True)
    size = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return self.digest


class RepositoryBlob(models.Model):
    """A blob pushed or mounted into a repository: only then may the repository serve it."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="blob_links")
    blob = models.ForeignKey(Blob, on_delete=models.PROTECT, related_name="repository_links")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "blob"], name="unique_repository_blob")]


class _Pushed(models.Model):
    """What a push leaves in a repository (a manifest, a tag) and by whom, unique in the
    repository by its `key` (a digest, a tag name)."""

    key: str
    separator: str  # between repository and key: `repo@sha256:…`, `repo:latest`
    repository: models.ForeignKey
    pushed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        abstract = True

    @classmethod
    def unique_in_repository(cls, key: str, name: str) -> list:
        return [models.UniqueConstraint(fields=["repository", key], name=name)]

    def __str__(self):
        return f"{self.repository}{self.separator}{getattr(self, self.key)}"


class Manifest(_Pushed):
    """An image manifest or index (OCI or Docker schema 2) in one repository."""

    key, separator = "digest", "@"
    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="manifests")
    digest = models.CharField(max_length=150)
    media_type = models.CharField(max_length=255)
    content = models.BinaryField()
    size = models.BigIntegerField()
    # For referrers: the manifest this one refers to (`subject`), and its artifact type
    # (artifactType, or the config's media type for an image manifest).
    subject_digest = models.CharField(max_length=150, blank=True, db_index=True)
    artifact_type = models.CharField(max_length=255, blank=True)
    annotations = models.JSONField(default=dict, blank=True)
    # Blobs (config and layers) and child manifests (of an index) it references.
    blobs = models.ManyToManyField(Blob, related_name="manifests", blank=True)
    children = models.ManyToManyField("self", symmetrical=False, related_name="parents", blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = _Pushed.unique_in_repository("digest", "unique_manifest_digest")


class Tag(_Pushed):
    key, separator = "name", ":"
    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="tags")
    name = models.CharField(max_length=128)
    manifest = models.ForeignKey(Manifest, on_delete=models.CASCADE, related_name="tags")
    updated_at = models.DateTimeField(default=timezone.now)
    # Written in batches with the pull events (msr/events.py): at most a second late.
    last_pulled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = _Pushed.unique_in_repository("name", "unique_tag_name")


class Upload(models.Model):
    """A blob upload in progress. Its bytes are in the store's upload area until the
    client completes it with the digest; then they are verified and published."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="uploads")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    started_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return str(self.id)


class StorageLease(models.Model):
    """A named lock across processes and hosts (msr/leases.py): an S3 upload's appends
    ("upload:<id>": S3 has no file to lock) and maintenance ("maintenance"). Taken by
    inserting the row (the primary key makes it exclusive), renewed while held, free
    again once `expires_at` has passed, so a process that died holding it blocks the
    work only until then."""

    name = models.CharField(max_length=100, primary_key=True)
    holder = models.CharField(max_length=32)
    expires_at = models.DateTimeField()

    def __str__(self):
        return self.name
