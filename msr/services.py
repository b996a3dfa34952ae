"""The registry's service layer: repositories, manifests and tags.

Views call these functions; they raise `msr.exceptions` errors for anything a client
did wrong or that is not there, and never return half a result.
"""


from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Namespace, User
from accounts.permissions import repository_actions
from msr import signals
from msr.manifests import MAX_REFERRER_DEPTH, ParsedManifest
from msr.exceptions import (
    BlobNotFound, DigestMismatch, ImmutableTag, InvalidDigest, InvalidTag, ManifestNotFound,
    ManifestReferencesUnknown, RepositoryNotFound, TagLimitReached, UploadLost,
)
from msr.models import Blob, Manifest, Repository, RepositoryBlob, Tag
from msr.prepared import prepared
from msr.references import digest_of, is_valid_digest, is_valid_tag, split_name
from msr.storage import get_storage

# -- repositories ----------------------------------------------------------------------


def find_repository(name: str) -> Repository | None:
    namespace, rest = split_name(name)
    if not rest:
        return None
    return (
        Repository.objects.select_related("namespace")
        .filter(namespace__name=namespace, name=rest).first()
    )


def get_repository(name: str) -> Repository:
    repository = find_repository(name)
    if repository is None:
        raise RepositoryNotFound(name)
    return repository


def ensure_repository(name: str) -> Repository:
    """The repository `name`, created (private) on first push. The caller has checked
    that the pusher may create it."""
    repository = find_repository(name)
    if repository is not None:
        return repository
    namespace_name, rest = split_name(name)
    namespace = Namespace.objects.filter(name=namespace_name).first()
    if namespace is None or not rest:
        raise RepositoryNotFound(name)
    try:
        with transaction.atomic():
            return Repository.objects.create(namespace=namespace, name=rest,
                                             visibility=namespace.default_visibility)
    except IntegrityError:  # created concurrently by another push
        return Repository.objects.select_related("namespace").get(namespace=namespace, name=rest)


def actions_for(user: User | None, name: str) -> frozenset[str]:
    """What `user` may do on the repository called `name` (which may not exist yet)."""
    namespace_name, rest = split_name(name)
    if not rest:
        return frozenset()
    namespace = Namespace.objects.filter(name=namespace_name).first()
    repository = None
    if namespace is not None:
        repository = Repository.objects.filter(namespace=namespace, name=rest).first()
    return repository_actions(user, namespace, repository)


# -- manifests -------------------------------------------------------------------------




@prepared
def _manifest_by_digest(namespace, repository, digest):
    return Manifest.objects.filter(
        repository__namespace__name=namespace, repository__name=repository, digest=digest
    ).values_list("digest", "media_type", "content")[:1]


@prepared
def _manifest_by_tag(namespace, repository, tag):
    return Tag.objects.filter(
        repository__namespace__name=namespace, repository__name=repository, name=tag
    ).values_list("manifest__digest", "manifest__media_type", "manifest__content")[:1]


@prepared
def _linked_blob_size(namespace, repository, digest):
    return RepositoryBlob.objects.filter(
        repository__namespace__name=namespace, repository__name=repository, blob_id=digest
    ).values_list("blob__size")[:1]


def resolve_manifest(name: str, reference: str) -> tuple[str, str, bytes]:
    """(digest, media type, content) of a manifest by tag or digest; one query."""
    namespace, rest = split_name(name)
    if ":" in reference:
        if not is_valid_digest(reference):
            raise InvalidDigest(reference)
        row = _manifest_by_digest(namespace, rest, reference)
    else:
        if not is_valid_tag(reference):
            # Reading, a reference that cannot be a tag names no manifest: 404, as the
            # distribution spec's conformance suite expects (a PUT still answers TAG_INVALID).
            get_repository(name)
            raise ManifestNotFound(name, reference)
        row = _manifest_by_tag(namespace, rest, reference)
    if row is None:
        get_repository(name)  # NAME_UNKNOWN before MANIFEST_UNKNOWN
        raise ManifestNotFound(name, reference)
    digest, media_type, content = row
    return digest, media_type, bytes(content)


def put_manifest(repository: Repository, reference: str, body: bytes, content_type: str,
                 user: User | None) -> Manifest:
    """Store a manifest and, for a tag reference, point the tag at it.

    Every blob and child manifest it references must already be in the repository, so a
    tag never shows an image whose parts are missing."""
    by_digest = ":" in reference
    if by_digest and not is_valid_digest(reference):
        raise InvalidDigest(reference)
    if not by_digest and not is_valid_tag(reference):
        raise InvalidTag(reference)
    parsed = ParsedManifest(body, content_type)
    digest = digest_of(body, reference.partition(":")[0] if by_digest else "sha256")
    if by_digest and digest != reference:
        raise DigestMismatch(reference, digest)

    with transaction.atomic():
        # Lock what the manifest will reference (the garbage collector's mark, msr/gc.py):
        # the collector either deleted it before (it reads as missing here) or sees the
        # reference once it gets the lock. Manifests before blobs, each sorted, children
        # before their index, as everywhere: no deadlock between pushes.
        children = list(Manifest.objects.select_for_update().filter(
            repository=repository, digest__in=parsed.child_digests).order_by("pk"))
        manifest = Manifest.objects.select_for_update().filter(repository=repository, digest=digest).first()
        held = set(
            Blob.objects.select_for_update().filter(digest__in=set(parsed.blob_digests))
            .order_by("digest").values_list("digest", flat=True)
        )
        linked = set(
            RepositoryBlob.objects.filter(repository=repository, blob_id__in=held)
            .values_list("blob_id", flat=True)
        )
        missing = [d for d in parsed.blob_digests if d not in linked]
        if missing:
            raise ManifestReferencesUnknown(missing)
        found = {child.digest for child in children}
        missing = [d for d in parsed.child_digests if d not in found]
        if missing:
            raise ManifestReferencesUnknown(missing)
        created = manifest is None
        if created:
            manifest, created = Manifest.objects.get_or_create(
                repository=repository, digest=digest,
                defaults=dict(media_type=parsed.media_type, content=body, size=len(body),
                              subject_digest=parsed.subject_digest,
                              artifact_type=parsed.artifact_type,
                              annotations=parsed.annotations, pushed_by=user),
            )
        else:
            # Pushed again: young again, so an untagged-manifest policy does not take it
            # between this push and the index or tag that will use it.
            Manifest.objects.filter(pk=manifest.pk).update(created_at=timezone.now())
        if created:
            manifest.blobs.set(set(parsed.blob_digests))
            manifest.children.set(children)
        tag = None
        if not by_digest:
            tag = reference
            write_tag(repository, tag, manifest, user, again=True)
        signals.manifest_pushed.send(
            sender=Manifest, repository=repository, manifest=manifest, tag=tag, user=user)
    return manifest


def delete_manifest(name: str, reference: str, user: User | None) -> None:
    """By digest: delete the manifest and every tag on it. By tag: delete the tag only."""
    repository = get_repository(name)
    with transaction.atomic():
        if ":" in reference:
            if not is_valid_digest(reference):
                raise InvalidDigest(reference)
            # The manifest before the repository, in put_manifest's order (no deadlock).
            manifest = Manifest.objects.select_for_update().filter(repository=repository, digest=reference).first()
            rules = _lock_rules(repository)
            if manifest is not None and not _is_system_admin(user):
                for tag_name in manifest.tags.order_by("name").values_list("name", flat=True):
                    _refuse_if_immutable(rules, tag_name, "deleted", digest=reference)
            deleted, _ = Manifest.objects.filter(repository=repository, digest=reference).delete()
            tag = None
        else:
            if not is_valid_tag(reference):
                raise InvalidTag(reference)
            rules = _lock_rules(repository)
            if not _is_system_admin(user) and Tag.objects.filter(repository=repository, name=reference).exists():
                _refuse_if_immutable(rules, reference, "deleted")
            deleted, _ = Tag.objects.filter(repository=repository, name=reference).delete()
            tag = reference
        if not deleted:
            raise ManifestNotFound(name, reference)
        signals.manifest_deleted.send(
            sender=Manifest, repository=repository, digest=reference if tag is None else None,
            tag=tag, user=user)


# -- tag rules: immutable tags and the tag limit ---------------------------------------
#
# Every write of a tag goes through `write_tag`, inside the caller's transaction, after
# it locked the manifests and blobs it uses; `write_tag` then locks the repository row
# (on SQLite the transaction already is the lock). Two pushes of one tag, or two new
# tags racing for the last places under the limit, are thus decided one after the
# other, each seeing what the other wrote, and each against the rules as they are now.


def display_name(repository: Repository) -> str:
    """How the repository is called in a refusal: `<host>/<ns>/<repo>` as users pull it."""
    host = urlsplit(settings.PUBLIC_URL).netloc if settings.PUBLIC_URL else ""
    return f"{host}/{repository.full_name}" if host else repository.full_name


def _lock_rules(repository: Repository) -> Repository:
    """The repository's row, locked until the transaction ends, with its current rules."""
    return Repository.objects.select_for_update().select_related("namespace").get(pk=repository.pk)


def _is_system_admin(user) -> bool:
    return bool(user is not None and getattr(user, "is_superuser", False))


def _refuse_if_immutable(rules: Repository, tag: str, action: str, digest: str = "") -> None:
    rule = rules.immutability_rule(tag)
    if rule is not None:
        raise ImmutableTag(display_name(rules), tag, rule, action, digest)


def write_tag(repository: Repository, tag: str, manifest: Manifest, user: User | None,
              again: bool = False) -> bool:
    """Point `tag` at `manifest` under the repository's rules; False if it already did
    (then, with `again`, only its push time and pusher are renewed: a re-push).

    An immutable tag that exists never moves (the same digest again is not a move: a
    client retrying or a CI re-run must still succeed). A new tag beyond the tag limit
    removes the tags pushed longest ago that no rule protects, each announced as a tag
    deletion; if too few may go, the push is refused and nothing is written."""
    rules = _lock_rules(repository)
    current = Tag.objects.filter(repository=repository, name=tag).first()
    now = timezone.now()
    if current is not None and current.manifest_id == manifest.pk:
        if again:
            Tag.objects.filter(pk=current.pk).update(pushed_by=user, updated_at=now)
        return False
    if current is not None:
        _refuse_if_immutable(rules, tag, "overwritten")
        Tag.objects.filter(pk=current.pk).update(manifest=manifest, pushed_by=user, updated_at=now)
        return True
    if rules.tag_limit:
        _make_room(rules, tag, user)
    Tag.objects.create(repository=repository, name=tag, manifest=manifest, pushed_by=user, updated_at=now)
    return True


def refuse_tag_move(repository: Repository, tag: str, digest: str) -> None:
    """ImmutableTag if pointing `tag` at `digest` would move an immutable tag. For copies
    that check before moving any byte (poll mirroring); `write_tag` decides again under
    the lock."""
    current = Tag.objects.filter(repository=repository, name=tag).values_list("manifest__digest", flat=True).first()
    if current is not None and current != digest:
        _refuse_if_immutable(Repository.objects.select_related("namespace").get(pk=repository.pk), tag,
                             "overwritten")


def _make_room(rules: Repository, tag: str, user: User | None) -> None:
    """Delete the oldest unprotected tags so that `tag` fits under the tag limit."""
    others = list(Tag.objects.filter(repository=rules).order_by("updated_at", "pk").values_list("pk", "name"))
    excess = len(others) + 1 - rules.tag_limit
    if excess <= 0:
        return
    movable = [(pk, name) for pk, name in others if rules.immutability_rule(name) is None]
    if len(movable) < excess:
        raise TagLimitReached(display_name(rules), tag, rules.tag_limit, len(others) - len(movable))
    for pk, name in movable[:excess]:
        Tag.objects.filter(pk=pk).delete()
        signals.manifest_deleted.send(sender=Manifest, repository=rules, digest=None, tag=name, user=user,
                                      reason={"reason": "tag limit", "tagLimit": rules.tag_limit,
                                              "pushedTag": tag})


def remove_tag_if_unchanged(repository: Repository, tag: str, manifest_id: int, pushed_at, before) -> bool:
    """Delete `tag` (in the caller's transaction, under the tag-write lock) only if it
    still points at `manifest_id`, its last push is `pushed_at` and came `before` that
    moment, and no rule makes it immutable: a tag pushed or moved since stays. For pruning,
    which records the deletion itself."""
    rules = _lock_rules(repository)
    if rules.immutability_rule(tag) is not None:
        return False
    deleted, _ = Tag.objects.filter(repository=repository, name=tag, manifest_id=manifest_id,
                                    updated_at=pushed_at, updated_at__lt=before).delete()
    return bool(deleted)


# -- blobs -----------------------------------------------------------------------------


def linked_blob_size(name: str, digest: str) -> int:
    """Size of a blob that repository `name` may serve; BLOB_UNKNOWN otherwise."""
    if not is_valid_digest(digest):
        raise InvalidDigest(digest)
    row = _linked_blob_size(*split_name(name), digest)
    if row is None:
        raise BlobNotFound(digest)
    return row[0]


# Every path that links a blob into a repository goes through `_link_held`, inside a
# transaction holding the Blob row's lock, after checking the bytes are in storage: the
# garbage collector removes bytes only while holding that lock (msr/gc.py explains why
# this makes a concurrent push and a collection safe).


def _hold_blob(digest: str, size: int | None = None) -> Blob | None:
    """The Blob row, locked until the transaction ends (on SQLite the transaction itself
    is the lock: BEGIN IMMEDIATE). With `size`, created when missing."""
    blob = Blob.objects.select_for_update().filter(digest=digest).first()
    if blob is None and size is not None:
        try:
            with transaction.atomic():
                Blob.objects.create(digest=digest, size=size)
        except IntegrityError:  # created by a concurrent push
            pass
        blob = Blob.objects.select_for_update().get(digest=digest)
    return blob


def _stored(blob: Blob) -> bool:
    return get_storage().blob_size(blob.digest) == blob.size


def _link_held(repository: Repository, blob: Blob) -> None:
    """Link a locked blob into `repository` and mark both as just used, so that the
    collector's grace period runs from now (the push's manifest is still to come)."""
    now = timezone.now()
    Blob.objects.filter(pk=blob.pk).update(created_at=now)
    RepositoryBlob.objects.update_or_create(repository=repository, blob=blob, defaults={"created_at": now})


def link_blob(repository: Repository, digest: str, size: int, republish=None) -> None:
    """Link uploaded bytes. If the collector removed the blob since they were published,
    `republish()` puts them back (False if it cannot: the upload must be sent again)."""
    with transaction.atomic():
        blob = _hold_blob(digest, size)
        if not _stored(blob) and (republish is None or not republish()):
            raise UploadLost(digest)
        _link_held(repository, blob)


def link_readable_blob(repository: Repository, digest: str, user: User | None) -> bool:
    """Link bytes this deployment already stores, when `user` may read a repository that
    holds them; False otherwise (then the caller must get the bytes from where it is
    copying, and they are verified on the way in). Storage is shared by every tenant: a
    digest is no proof of the right to its bytes, so a copy never links what its owner
    could not pull."""
    from accounts.permissions import readable_repositories

    with transaction.atomic():
        blob = _hold_blob(digest)
        if blob is None or not _stored(blob):
            return False
        holders = Repository.objects.filter(blob_links__blob=blob)
        if user is None or not readable_repositories(user, holders).exists():
            return False
        _link_held(repository, blob)
    return True


def mount_blob(source_name: str, repository: Repository, digest: str) -> bool:
    """Link a blob of `source_name` into `repository`; False if the source lacks it."""
    namespace, rest = split_name(source_name)
    with transaction.atomic():
        blob = Blob.objects.select_for_update(of=("self",)).filter(
            digest=digest, repository_links__repository__namespace__name=namespace,
            repository_links__repository__name=rest,
        ).first()
        if blob is None or not _stored(blob):
            return False
        _link_held(repository, blob)
    return True


def unlink_blob(name: str, digest: str) -> None:
    if not is_valid_digest(digest):
        raise InvalidDigest(digest)
    repository = get_repository(name)
    deleted, _ = RepositoryBlob.objects.filter(repository=repository, blob_id=digest).delete()
    if not deleted:
        raise BlobNotFound(digest)


# -- linking content between repositories (promotion) ----------------------------------

def _manifest_tree(repository: Repository, digest: str) -> list[Manifest]:
    """The manifest `digest` of `repository`, its children (of an index) and the
    referrers attached to any of them (signatures, SBOMs, and their own referrers), in an
    order where every manifest comes after the manifests it references."""
    # Locked: the collector deletes a child or referrer only after its parent or subject,
    # so holding the root keeps the whole tree (and its blobs) while it is copied.
    root = Manifest.objects.select_for_update().filter(repository=repository, digest=digest).first()
    if root is None:
        raise ManifestNotFound(repository.full_name, digest)
    ordered: list[Manifest] = []
    seen: set[str] = set()

    def visit(manifest: Manifest, depth: int) -> None:
        if manifest.digest in seen:
            return
        seen.add(manifest.digest)
        for child in manifest.children.all():
            visit(child, depth)
        ordered.append(manifest)
        if depth < MAX_REFERRER_DEPTH:
            for referrer in Manifest.objects.filter(repository=repository, subject_digest=manifest.digest):
                visit(referrer, depth + 1)

    visit(root, 0)
    return ordered


def link_manifest(source: Repository, digest: str, target: Repository, tag: str | None,
                  user: User | None, depth: int = 0) -> tuple[Manifest, bool]:
    """Make the image `digest` of `source` part of `target` and point `tag` at it,
    without copying a byte: blobs are linked (storage is content-addressed) and the
    manifest rows are copied with their exact content, children and referrers included.

    One transaction: the target shows the whole image or nothing. Returns the target's
    manifest and whether anything changed; `manifest_pushed` is sent (with `depth`, so a
    chain of promotions can be bounded) only when the tag moved or a manifest was added.
    """
    if tag is not None and not is_valid_tag(tag):
        raise InvalidTag(tag)
    with transaction.atomic():
        tree = _manifest_tree(source, digest)
        # The target's copies, then the blobs, locked in put_manifest's order: the
        # collector neither deletes a copy about to be tagged nor drops a target's link
        # that a copy is about to use (msr/gc.py).
        existing = {m.digest: m for m in Manifest.objects.select_for_update().filter(
            repository=target, digest__in=[m.digest for m in tree]).order_by("pk")}
        blob_ids = set(
            Manifest.blobs.through.objects.filter(manifest__in=tree).values_list("blob_id", flat=True))
        list(Blob.objects.select_for_update().filter(digest__in=blob_ids).order_by("digest")
             .values_list("digest", flat=True))
        have = set(RepositoryBlob.objects.filter(repository=target, blob_id__in=blob_ids)
                   .values_list("blob_id", flat=True))
        RepositoryBlob.objects.bulk_create(
            [RepositoryBlob(repository=target, blob_id=b) for b in sorted(blob_ids - have)],
            ignore_conflicts=True)
        copies: dict[str, Manifest] = {}
        changed = False
        for manifest in tree:
            copy = existing.get(manifest.digest)
            created = False
            if copy is None:
                copy, created = Manifest.objects.get_or_create(
                    repository=target, digest=manifest.digest,
                    defaults=dict(media_type=manifest.media_type, content=bytes(manifest.content),
                                  size=manifest.size, subject_digest=manifest.subject_digest,
                                  artifact_type=manifest.artifact_type, annotations=manifest.annotations,
                                  pushed_by=user))
            if created:
                changed = True
                copy.blobs.set(list(manifest.blobs.values_list("digest", flat=True)))
                copy.children.set([copies[c] for c in manifest.children.values_list("digest", flat=True)
                                   if c in copies])
            copies[manifest.digest] = copy
        manifest = copies[digest]
        if tag is not None and write_tag(target, tag, manifest, user):
            changed = True
        if changed:
            signals.manifest_pushed.send(sender=Manifest, repository=target, manifest=manifest, tag=tag,
                                         user=user, depth=depth)
    return manifest, changed
