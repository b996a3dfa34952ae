"""Garbage collection: free what no image uses, while pushes go on.

What is garbage (in this order, each step seeing the previous one's deletions):

1. *Untagged manifests*, only when the policy says so (`GC_UNTAGGED = "delete"`; the
   default `"keep"` deletes no manifest). A manifest is kept if it is tagged, younger
   than the grace period, a child of a kept index or a referrer (`subject`) of a kept
   manifest, all within its repository. The rest goes, an index before its children and
   a subject before its referrers (its signatures, SBOMs), with its rows in the
   database. Deleting a manifest by digest through the API removes it at once; this only
   frees what it referenced.
2. *Links* (`RepositoryBlob`): a repository stops serving a blob that no manifest of
   that repository references, once the link is older than the grace period — layers
   pushed but never used by a manifest (an abandoned push, a deleted image).
3. *Blobs*: the row and the bytes of a blob that no manifest anywhere references and
   that was not pushed, mounted or linked within the grace period. Storage is
   content-addressed and shared: a layer used by another repository's image stays.
4. *Uploads* idle for `GC_UPLOAD_AGE_SECONDS` (the row and the upload area, by the last
   byte received), and upload areas whose row is gone (a deleted repository).

`collect(dry_run=True)` plans the same (counting the manifests it would delete as gone
when it looks for unused blobs) and deletes nothing; both return a `Report` (counts and
bytes). Beat runs `msr.tasks.collect_garbage` every `GC_INTERVAL_SECONDS`; `msr manage gc
[--dry-run] [--grace S] [--untagged keep|delete] [--upload-age S] [--json]` runs it by
hand; each real run records an audit event of type `gc` with the report. Planning reads
only candidate rows; deleting goes a hundred rows per transaction (9,000 rows in about
4 s on PostgreSQL on a 2-core machine).

Why a concurrent push cannot lose data
--------------------------------------
The plan is read without locks and may be stale; deletions then go in batches (a
hundred rows per transaction), each taking the rows' locks and re-checking, from the
database as it is now, the condition that makes a row garbage. Push paths take the same
locks before they add a reference, so a push and a batch are ordered, and either order
is safe. The collector locks with SKIP LOCKED: a row a push holds right now is in use
and is spared (counted in the report's `spared`), so the collector never waits for a
push and cannot deadlock with one.

* A *blob*'s lock is its `Blob` row (`select_for_update`; on SQLite every transaction
  starts with BEGIN IMMEDIATE and so excludes every other writer). The collector deletes
  the row only if, under that lock, no manifest references the blob and neither the
  blob nor any of its links was touched since the run's cutoff. Every path that makes
  a blob usable — `services.link_blob` (an upload), `mount_blob`, `link_readable_blob`
  (mirroring's local link), `put_manifest` (its referenced blobs) and `link_manifest`
  (promotion) — locks the row first, then, when linking, checks that the bytes are in
  storage and touches the row's `created_at` (the mark; a link's `created_at` too).
  So a push that comes second finds the row gone (mount/link answer "not here" and the
  client uploads; `put_manifest` answers MANIFEST_BLOB_UNKNOWN; an upload recreates
  the row and, if the bytes it found already stored were the ones collected, publishes
  its own again); a collection that comes second finds the reference or a mark newer
  than its cutoff and skips the blob. Manifest GET and blob GET take no lock and no
  extra query.
* The *bytes* leave only under that lock: inside the deleting transaction the file is
  renamed aside (atomic, same file system), and it is removed only after the commit; if
  the transaction fails it is put back (S3: copied aside and deleted, as S3 has no
  rename). A push that waited for the lock therefore sees
  row and file gone together, never a row without its file. (Unlinking the file only
  after the commit, outside the lock, would not do: an upload could recreate the row in
  between, finding the old file still there and dropping its own bytes, and then lose
  the file.) A run that died between the rename and the commit left the file aside:
  the next run puts it back if its row still exists (else removes it), first thing.
* A *manifest*'s lock is its row. It is deleted only if, under the lock, it has no tag,
  no parent index and no subject in its repository, and was not pushed since the cutoff
  (a re-push counts as a push). `put_manifest` locks the manifest it tags (or re-pushes)
  and the children of an index; `link_manifest` locks the root it copies (which keeps
  its children and referrers, as they go only after their parent or subject) and the
  target's copies. A tag or an index that arrives second finds the manifest gone
  (MANIFEST_UNKNOWN / MANIFEST_BLOB_UNKNOWN) or is seen by the collector's re-check.
* A *link*'s deletion takes its blob's lock and re-checks that no manifest of the
  repository references the blob; `put_manifest` reads the links only after locking the
  blobs, so it sees the link gone or the collector sees its manifest.

The grace period is not what makes this safe (a run with grace 0 loses nothing that is
referenced); it keeps pushes from failing: a blob uploaded or mounted a moment ago,
waiting for the manifest that will reference it, is not collected before that manifest
comes. A client that found an old, unused blob by HEAD and skipped its upload can still
see MANIFEST_BLOB_UNKNOWN if a run collects it meanwhile; pushing again uploads it.
"""

import logging
import time
import uuid
from collections import Counter, defaultdict
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from graphlib import CycleError, TopologicalSorter

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Subquery
from django.utils import timezone

from msr.events import record
from msr.maintenance import maintenance_lock
from msr.models import Blob, Event, Manifest, RepositoryBlob, Tag, Upload
from msr.storage import UploadBusy, get_storage

log = logging.getLogger(__name__)

KEEP, DELETE = "keep", "delete"
UNTAGGED_POLICIES = (KEEP, DELETE)
MANIFEST_BLOBS = Manifest.blobs.through
MANIFEST_CHILDREN = Manifest.children.through
CHUNK = 500
# Deletions per transaction: few commits, locks held for milliseconds.
BATCH = 100


@dataclass
class Report:
    """What a run freed (or, dry, would free). `spared` counts candidates that a push
    made live again during the run: the re-check kept them."""

    dry_run: bool = False
    grace_seconds: int = 0
    untagged: str = KEEP
    manifests: int = 0
    manifest_bytes: int = 0
    links: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    uploads: int = 0
    upload_bytes: int = 0
    spared: int = 0
    seconds: float = 0.0

    @property
    def bytes_freed(self) -> int:
        """Bytes freed in storage (blobs and uploads; manifests live in the database)."""
        return self.blob_bytes + self.upload_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "bytes_freed": self.bytes_freed}


def collect(dry_run: bool = False, grace: int | None = None, untagged: str | None = None,
            upload_age: int | None = None, trigger: str = "command") -> Report:
    """One garbage collection (see the module docstring). Steps:

    1. Put back or remove bytes that a dead run left aside.
    2. Plan and delete unreachable untagged manifests (policy "delete").
    3. Plan and delete unused links, then unreferenced blobs and their bytes.
    4. Remove stale uploads.
    5. Record a `gc` audit event (not for a dry run).
    """
    grace = settings.GC_GRACE_SECONDS if grace is None else grace
    untagged = settings.GC_UNTAGGED if untagged is None else untagged
    upload_age = settings.GC_UPLOAD_AGE_SECONDS if upload_age is None else upload_age
    if untagged not in UNTAGGED_POLICIES:
        raise ValueError(f"untagged: expected one of {UNTAGGED_POLICIES}, not {untagged!r}")
    if grace < 0 or upload_age < 0:
        raise ValueError("grace and upload_age are seconds, 0 or more")
    started = time.monotonic()
    storage = get_storage()
    # Everything touched at or after the cutoff is young: a push during the run always is.
    cutoff = timezone.now() - timedelta(seconds=grace)
    report = Report(dry_run=dry_run, grace_seconds=grace, untagged=untagged)

    # Not while a backup copies blobs its snapshot references, nor during a restore
    # (msr/maintenance.py); a dry run deletes nothing and needs no lock.
    with nullcontext() if dry_run else maintenance_lock("collect garbage"):
        if not dry_run:
            _recover_aside(storage)
        gone = _collect_manifests(report, cutoff, dry_run) if untagged == DELETE else []
        _collect_blobs(report, storage, cutoff, gone, dry_run)
        _collect_uploads(report, storage, time.time() - upload_age, dry_run)
    report.seconds = round(time.monotonic() - started, 3)
    if not dry_run:
        record(Event.GC, detail={**report.as_dict(), "trigger": trigger})
    log.info("garbage collection%s: %s", " (dry run)" if dry_run else "", report.as_dict())
    return report


def _collect_manifests(report: Report, cutoff: datetime, dry_run: bool) -> list[int]:
    """Delete (or count) the untagged manifests no kept manifest reaches; for a dry run,
    the pks that would go (the blob plan imagines them gone)."""
    generations = plan_manifests(cutoff)
    doomed = [item for generation in generations for item in generation]
    if dry_run:
        report.manifests = len(doomed)
        report.manifest_bytes = sum(size for _, size in doomed)
        return [pk for pk, _ in doomed]
    for generation in generations:
        for batch in _chunks(generation, BATCH):
            count, size = _delete_manifests(dict(batch), cutoff)
            report.manifests += count
            report.manifest_bytes += size
            report.spared += len(batch) - count
    return []  # a real run reads what is left


def _collect_blobs(report: Report, storage, cutoff: datetime, gone: list[int],
                   dry_run: bool) -> None:
    """Delete (or count) unused links, then unreferenced blobs with their bytes."""
    links = plan_links(cutoff, gone)
    blobs = plan_blobs(cutoff, gone)
    if dry_run:
        report.links = len(links)
        report.blobs = len(blobs)
        report.blob_bytes = sum(size for _, size in blobs)
        return
    by_blob: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for pk, repository_id, digest in links:
        by_blob[digest].append((pk, repository_id))
    for batch in _chunks(sorted(by_blob), BATCH):
        count = _delete_links({digest: by_blob[digest] for digest in batch}, cutoff)
        report.links += count
        report.spared += sum(len(by_blob[digest]) for digest in batch) - count
    for batch in _chunks(sorted(digest for digest, _ in blobs), BATCH):
        count, size, links_removed = _delete_blobs(storage, batch, cutoff)
        report.blobs += count
        report.blob_bytes += size
        report.links += links_removed
        report.spared += len(batch) - count


def _collect_uploads(report: Report, storage, cutoff: float, dry_run: bool) -> None:
    for upload_id in _stale_uploads(storage, cutoff):
        freed = _upload_size(storage, upload_id) if dry_run else _delete_upload(storage, upload_id, cutoff)
        if freed is not None:
            report.uploads += 1
            report.upload_bytes += freed


# -- planning (no locks; every deletion re-checks) ------------------------------------------


def _chunks(items, size=CHUNK):
    items = list(items)
    for i in range(0, len(items), size):
        yield items[i:i + size]


def plan_manifests(cutoff: datetime) -> list[list[tuple[int, int]]]:
    """(pk, size) of the untagged manifests older than `cutoff` that no kept manifest
    reaches (as child or referrer), in generations: an index in one before its children
    in a later one, a subject before its referrers."""
    candidates: dict[int, tuple[int | None, int]] = {
        pk: (subject, size)
        for pk, subject, size in Manifest.objects.filter(created_at__lt=cutoff, tags__isnull=True)
        .annotate(subject_pk=Subquery(Manifest.objects.filter(
            repository_id=OuterRef("repository_id"), digest=OuterRef("subject_digest")).values("pk")[:1]))
        .values_list("pk", "subject_pk", "size").iterator()
    }
    if not candidates:
        return []
    parents: dict[int, list[int]] = defaultdict(list)
    for parent, child in MANIFEST_CHILDREN.objects.filter(
            to_manifest__created_at__lt=cutoff, to_manifest__tags__isnull=True
    ).values_list("from_manifest_id", "to_manifest_id").iterator():
        if child in candidates:
            parents[child].append(parent)
    # Kept: reached from a manifest that is no candidate (tagged or young), or from a
    # kept candidate; spread from the first to what they reach.
    reaches: dict[int, list[int]] = defaultdict(list)
    kept: list[int] = []
    for pk, (subject, _) in candidates.items():
        sources = parents[pk] + ([subject] if subject is not None else [])
        for source in sources:
            reaches[source].append(pk)
        if any(source not in candidates for source in sources):
            kept.append(pk)
    alive = set(kept)
    while kept:
        for pk in reaches[kept.pop()]:
            if pk not in alive:
                alive.add(pk)
                kept.append(pk)
    doomed = {pk for pk in candidates if pk not in alive}
    graph = {pk: [p for p in parents[pk] if p in doomed] + (
        [candidates[pk][0]] if candidates[pk][0] in doomed else []) for pk in doomed}
    generations = []
    try:
        sorter = TopologicalSorter(graph)
        sorter.prepare()
        while sorter.is_active():
            ready = sorted(sorter.get_ready())
            generations.append([(pk, candidates[pk][1]) for pk in ready])
            sorter.done(*ready)
    except CycleError:  # digests cannot form a cycle; the re-check keeps whatever this is
        generations = [[(pk, candidates[pk][1]) for pk in sorted(doomed)]]
    return generations


def _refs_lost(gone: list[int]) -> tuple[set[tuple[int, str]], set[str]]:
    """For a dry run: the (repository, blob) pairs whose every reference is from a
    manifest in `gone`, and the blobs referenced only from `gone`."""
    lost: Counter = Counter()
    for chunk in _chunks(gone):
        lost.update(MANIFEST_BLOBS.objects.filter(manifest_id__in=chunk)
                    .values_list("manifest__repository_id", "blob_id"))
    total: Counter = Counter()
    for chunk in _chunks({blob for _, blob in lost}):
        total.update(MANIFEST_BLOBS.objects.filter(blob_id__in=chunk)
                     .values_list("manifest__repository_id", "blob_id"))
    pairs = {pair for pair, n in lost.items() if total[pair] == n}
    by_blob_lost, by_blob_total = Counter(), Counter()
    for (_, blob), n in lost.items():
        by_blob_lost[blob] += n
    for (_, blob), n in total.items():
        by_blob_total[blob] += n
    return pairs, {blob for blob, n in by_blob_lost.items() if by_blob_total[blob] == n}


def plan_links(cutoff: datetime, gone: list[int] = ()) -> list[tuple[int, int, str]]:
    """(pk, repository, blob) of links older than `cutoff` that no manifest of their
    repository references (counting the manifests in `gone` as deleted)."""
    used = MANIFEST_BLOBS.objects.filter(blob_id=OuterRef("blob_id"),
                                         manifest__repository_id=OuterRef("repository_id"))
    plan = list(RepositoryBlob.objects.filter(created_at__lt=cutoff).filter(~Exists(used))
                .values_list("pk", "repository_id", "blob_id").iterator())
    if gone:
        pairs, _ = _refs_lost(gone)
        for chunk in _chunks({blob for _, blob in pairs}):
            plan += [row for row in RepositoryBlob.objects.filter(blob_id__in=chunk, created_at__lt=cutoff)
                     .values_list("pk", "repository_id", "blob_id") if (row[1], row[2]) in pairs]
    return plan


def plan_blobs(cutoff: datetime, gone: list[int] = ()) -> list[tuple[str, int]]:
    """(digest, size) of blobs no manifest references (counting the manifests in `gone`
    as deleted), with no push, mount or link since `cutoff`. Their links are older, so
    unused: `plan_links` has them."""
    fresh_link = RepositoryBlob.objects.filter(blob_id=OuterRef("pk"), created_at__gte=cutoff)
    old = Blob.objects.filter(created_at__lt=cutoff).filter(~Exists(fresh_link))
    plan = list(old.filter(~Exists(MANIFEST_BLOBS.objects.filter(blob_id=OuterRef("pk"))))
                .values_list("digest", "size").iterator())
    if gone:
        _, blobs = _refs_lost(gone)
        for chunk in _chunks(blobs):
            plan += old.filter(digest__in=chunk).values_list("digest", "size")
    return plan


# -- deleting (a batch per transaction, under the locks, re-checked) -------------------------
#
# The collector locks with SKIP LOCKED: a row a push holds is in use, so it is spared
# rather than waited for, and the collector never waits on a push's lock (no deadlock).


def _delete_manifests(batch: dict[int, int], cutoff: datetime) -> tuple[int, int]:
    """Delete the manifests of `batch` (pk -> size; none the parent or subject of
    another) that are still garbage; (count, bytes)."""
    with transaction.atomic():
        rows = list(Manifest.objects.select_for_update(skip_locked=True)
                    .filter(pk__in=batch, created_at__lt=cutoff).order_by("pk")
                    .values_list("pk", "repository_id", "subject_digest"))
        pks = [pk for pk, _, _ in rows]
        live = set(Tag.objects.filter(manifest_id__in=pks).values_list("manifest_id", flat=True))
        live.update(MANIFEST_CHILDREN.objects.filter(to_manifest_id__in=pks).values_list("to_manifest_id", flat=True))
        subjects = set(Manifest.objects.filter(digest__in={d for _, _, d in rows if d})
                       .values_list("repository_id", "digest"))
        live.update(pk for pk, repository_id, subject in rows if (repository_id, subject) in subjects)
        doomed = [pk for pk in pks if pk not in live]
        Manifest.objects.filter(pk__in=doomed).delete()
    return len(doomed), sum(batch[pk] for pk in doomed)


def _lock_blobs(digests, cutoff: datetime | None = None) -> dict[str, int]:
    """Lock the Blob rows (sorted, as the push paths do); digest -> size of those locked."""
    rows = Blob.objects.select_for_update(skip_locked=True).filter(digest__in=digests)
    if cutoff is not None:
        rows = rows.filter(created_at__lt=cutoff)
    return dict(rows.order_by("digest").values_list("digest", "size"))


def _delete_links(batch: dict[str, list[tuple[int, int]]], cutoff: datetime) -> int:
    """Delete the links of `batch` (blob -> [(link pk, repository)]) that no manifest of
    their repository references, under their blobs' locks; how many."""
    with transaction.atomic():
        held = _lock_blobs(batch)
        used = set(MANIFEST_BLOBS.objects.filter(blob_id__in=held)
                   .values_list("manifest__repository_id", "blob_id"))
        doomed = [pk for digest in held for pk, repository_id in batch[digest] if (repository_id, digest) not in used]
        deleted, _ = RepositoryBlob.objects.filter(pk__in=doomed, created_at__lt=cutoff).delete()
    return deleted


def _delete_blobs(storage, batch: list[str], cutoff: datetime) -> tuple[int, int, int]:
    """Delete the blobs of `batch` (row, remaining links, bytes) that are still garbage;
    (count, bytes, links)."""
    aside: dict[str, object] = {}
    try:
        with transaction.atomic():
            held = _lock_blobs(batch, cutoff)
            live = set(MANIFEST_BLOBS.objects.filter(blob_id__in=held).values_list("blob_id", flat=True))
            live.update(RepositoryBlob.objects.filter(blob_id__in=held, created_at__gte=cutoff)
                        .values_list("blob_id", flat=True))
            doomed = [digest for digest in held if digest not in live]
            links, _ = RepositoryBlob.objects.filter(blob_id__in=doomed).delete()
            Blob.objects.filter(digest__in=doomed).delete()
            for digest in doomed:
                path = storage.set_aside(digest)
                if path is not None:
                    aside[digest] = path
    except BaseException:
        for digest, path in aside.items():
            _put_back(storage, digest, path)
        raise
    for token in aside.values():
        storage.drop_aside(token)
    return len(doomed), sum(held[digest] for digest in doomed), links


def _put_back(storage, digest: str, aside) -> None:
    """The deletion did not commit: the bytes go back (unless a push republished them)."""
    try:
        storage.put_back(digest, aside)
    except Exception:
        log.exception("could not put back %s from %s", digest, aside)


def _recover_aside(storage) -> None:
    """Bytes left aside by a run that died before its commit: back if the row is still
    there, else removed. Under the blob's lock, like the deletion itself."""
    for aside, digest in list(storage.list_aside()):
        with transaction.atomic():
            exists = bool(Blob.objects.select_for_update().filter(digest=digest).values_list("digest"))
            try:
                if exists:
                    storage.put_back(digest, aside)
                    log.warning("garbage collection: put back %s (a previous run did not finish)", digest)
                else:
                    storage.drop_aside(aside)
            except FileNotFoundError:  # a concurrent run finished it
                pass


# -- uploads --------------------------------------------------------------------------------


def _last_write(storage, upload_id: str) -> float | None:
    return storage.upload_last_write(upload_id)


def _stale_uploads(storage, cutoff: float) -> list[str]:
    """Uploads (by row or by upload area) that received nothing since `cutoff`."""
    started = datetime.fromtimestamp(cutoff, tz=UTC)
    ids = {str(pk) for pk in Upload.objects.filter(started_at__lt=started).values_list("pk", flat=True)}
    ids.update(storage.list_uploads())
    return sorted(i for i in ids if (_last_write(storage, i) or 0) < cutoff
                  and not Upload.objects.filter(pk=_uuid(i), started_at__gte=started).exists())


def _uuid(value: str):
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _upload_size(storage, upload_id: str) -> int:
    return storage.upload_size(upload_id) or 0


def _delete_upload(storage, upload_id: str, cutoff: float) -> int | None:
    """Remove an abandoned upload unless a request is writing to it right now."""
    try:
        with storage.locked(upload_id) as fd:
            if (_last_write(storage, upload_id) or 0) >= cutoff:
                return None
            size = storage.handle_size(fd)
            Upload.objects.filter(pk=_uuid(upload_id)).delete()
            storage.discard_upload(upload_id)
            return size
    except UploadBusy:
        return None
    except FileNotFoundError:  # a row without bytes, or a folder without data
        if (_last_write(storage, upload_id) or 0) >= cutoff:
            return None  # its bytes were just published: it is being completed
        Upload.objects.filter(pk=_uuid(upload_id)).delete()
        storage.discard_upload(upload_id)
        return 0
