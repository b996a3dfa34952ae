"""The copy engine: move one image (manifest, index children, referrers and every blob)
from a source repository to a destination, local or remote.

Order makes it safe to read the destination at any moment: blobs first, then index
children and referrers by digest, the tagged manifest last, so the destination never
shows an image whose parts are missing. Only what the destination lacks moves (a HEAD per
blob; a cross-repository mount on the same registry; a link when the bytes are already
in local storage and the policy's owner may read a repository holding them: a manifest
that names a digest proves nothing, so anything else is fetched from the source and
verified). Blobs stream through in 1 MiB pieces: memory does not grow with the
image. Running it twice is harmless.
"""

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import connection

from mirroring.client import PIECE, BlobBody, Permanent, Remote, Transient
from msr import jsonsafe, services, uploads
from msr.exceptions import DomainError
from msr.manifests import MAX_REFERRER_DEPTH
from msr.models import Manifest, Repository, RepositoryBlob
from msr.references import is_valid_digest
from msr.storage import get_storage

log = logging.getLogger(__name__)


class Canceled(Exception):
    pass


# -- the two ends ----------------------------------------------------------------------


class LocalEnd:
    """A repository of this deployment, read through the storage and service layers, for
    `actor` (the policy's owner): bytes already stored are linked only when the actor
    may read a repository that holds them."""

    def __init__(self, repository: Repository, actor=None):
        self.repository = repository
        self.actor = actor
        self.name = repository.full_name

    def manifest(self, reference: str) -> tuple[bytes, str, str]:
        digest, media_type, body = services.resolve_manifest(self.name, reference)
        return body, media_type, digest

    def manifest_digest(self, reference: str) -> str | None:
        try:
            return services.resolve_manifest(self.name, reference)[0]
        except DomainError:  # none there, or a reference that cannot name one here
            return None

    def referrers(self, digest: str) -> list[dict]:
        return [{"digest": d, "mediaType": t} for d, t in Manifest.objects.filter(
            repository=self.repository, subject_digest=digest).values_list("digest", "media_type")]

    def open_blob(self, digest: str):
        return get_storage().open_blob(digest)

    def blob_exists(self, digest: str) -> bool:
        return RepositoryBlob.objects.filter(repository=self.repository, blob_id=digest).exists()

    def link_existing(self, digest: str) -> bool:
        """Link bytes this deployment already stores (verified when they were stored) if
        the actor may read them, checked under the blob's lock so a garbage collection
        cannot take them meanwhile. False: the bytes must come from the source."""
        return services.link_readable_blob(self.repository, digest, self.actor)

    def write_blob(self, digest: str, size: int, reader, on_bytes) -> None:
        upload = uploads.start_upload(self.repository, None)
        try:
            uploads.complete_upload(upload, digest, iter(BlobBody(reader, size, on_bytes)))
        except DomainError as e:
            uploads.cancel_upload(upload)
            raise Permanent(f"blob {digest}: {e.message} {e.detail or ''}".strip()) from None
        except BaseException:
            uploads.cancel_upload(upload)
            raise

    def put_manifest(self, reference: str, body: bytes, media_type: str, doc=None) -> str:
        try:
            return services.put_manifest(self.repository, reference, body, media_type, user=None).digest
        except DomainError as e:
            raise Permanent(f"{self.name}: manifest {reference}: {e.message} {e.detail or ''}".strip()) from None


class ResponseReader:
    """read(n) over a streaming requests response; a cut connection is Transient."""

    def __init__(self, response, name: str):
        self.response, self.name = response, name

    def read(self, n: int) -> bytes:
        try:
            return self.response.raw.read(n, decode_content=True)
        except Exception as e:  # urllib3's ProtocolError, ReadTimeoutError, OSError
            raise Transient(f"{self.name}: blob download cut: {type(e).__name__}") from None

    def close(self) -> None:
        self.response.close()


class RemoteEnd:
    def __init__(self, remote: Remote):
        self.remote = remote
        self.name = remote.name

    def manifest(self, reference):
        return self.remote.manifest(reference)

    def manifest_digest(self, reference):
        return self.remote.manifest_digest(reference)

    def referrers(self, digest):
        return self.remote.referrers(digest)

    def open_blob(self, digest):
        return ResponseReader(self.remote.open_blob(digest), self.name)

    def blob_exists(self, digest):
        return self.remote.blob_exists(digest)

    def link_existing(self, digest):
        return False

    def write_blob(self, digest, size, reader, on_bytes):
        self.remote.upload(digest, size, reader, settings.MIRROR_CHUNK_BYTES, on_bytes)

    def put_manifest(self, reference, body, media_type, doc=None):
        digest, indexed = self.remote.put_manifest(reference, body, media_type)
        if doc is not None and doc.subject and not indexed:
            # A registry without the referrers API: keep the spec's fallback tag
            # (<alg>-<hex>, an index of the subject's referrers) up to date.
            self.remote.add_referrer_to_fallback_tag(doc.subject, doc.descriptor)
        return digest


# -- what an image is made of ------------------------------------------------------------


class Doc:
    """One manifest to copy, with the blobs (digest → size) it references."""

    def __init__(self, digest: str, media_type: str, body: bytes):
        self.digest, self.media_type, self.body = digest, media_type, body
        try:
            document = jsonsafe.loads(body)
        except ValueError:
            raise Permanent(f"manifest {digest} is not JSON (or is nested too deeply)") from None
        if not isinstance(document, dict):
            raise Permanent(f"manifest {digest} is not a JSON object")
        self.media_type = media_type or document.get("mediaType") or ""
        subject = document.get("subject")
        self.subject = subject.get("digest") if isinstance(subject, dict) else None
        config = document.get("config") if isinstance(document.get("config"), dict) else {}
        self.descriptor = {"mediaType": self.media_type, "digest": digest, "size": len(body)}
        artifact_type = document.get("artifactType") or config.get("mediaType")
        if artifact_type:
            self.descriptor["artifactType"] = artifact_type
        if isinstance(document.get("annotations"), dict):
            self.descriptor["annotations"] = document["annotations"]
        self.blobs: dict[str, int] = {}
        self.children: list[str] = []
        descriptors = [document.get("config")] + list(document.get("layers") or []) + list(
            document.get("blobs") or [])
        for d in descriptors:
            if isinstance(d, dict) and is_valid_digest(str(d.get("digest", ""))) and not d.get("urls"):
                self.blobs[d["digest"]] = int(d.get("size") or 0)
        for d in document.get("manifests") or []:
            if isinstance(d, dict) and is_valid_digest(str(d.get("digest", ""))):
                self.children.append(d["digest"])


def plan(source, reference: str, log_line) -> tuple[Doc, list[Doc]]:
    """The top manifest, and the manifests to put before it: index children (before
    their index) and referrers of any of them (signatures, SBOMs, their referrers)."""
    body, media_type, digest = source.manifest(reference)
    top = Doc(digest, media_type, body)
    before: list[Doc] = []
    seen = {digest}

    def visit(digest: str) -> Doc | None:
        """The document of `digest`, its children fetched (into `before`) first; None
        when it was already visited."""
        if digest in seen:
            return None
        seen.add(digest)
        body, media_type, _ = source.manifest(digest)
        doc = Doc(digest, media_type, body)
        children_of(doc)
        return doc

    def children_of(doc: Doc):
        for child in doc.children:
            child_doc = visit(child)
            if child_doc is not None:
                before.append(child_doc)

    children_of(top)
    images = [top] + list(before)
    queue = [(doc, 0) for doc in images]
    referrers: list[Doc] = []
    while queue:
        doc, depth = queue.pop(0)
        if depth >= MAX_REFERRER_DEPTH:
            continue
        for descriptor in source.referrers(doc.digest):
            ref_doc = visit(descriptor["digest"]) if descriptor.get("digest") else None
            if ref_doc is not None:
                referrers.append(ref_doc)
                queue.append((ref_doc, depth + 1))
    if referrers:
        log_line(f"{len(referrers)} referrer(s) travel with the image")
    return top, before + referrers


# -- progress and copying ------------------------------------------------------------------


class Progress:
    """Bytes done of total, counted by the copying threads and read by the heartbeat."""

    def __init__(self):
        self.lock = threading.Lock()
        self.total = 0
        self.done = 0

    def add_total(self, n: int) -> None:
        with self.lock:
            self.total += n

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.done, self.total


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


def copy_image(source, destination, reference: str, target_reference: str, progress: Progress,
               log_line, check) -> str:
    """Copy the image `reference` of `source` to `destination` as `target_reference`;
    returns the digest, verified to be the same at both ends. `check()` raises to stop
    (cancel, or the job was taken over)."""
    top, before = plan(source, reference, log_line)
    docs = before + [top]
    blobs: dict[str, int] = {}
    for doc in docs:
        blobs.update(doc.blobs)
    missing = [(d, s) for d, s in blobs.items() if not destination.blob_exists(d)]
    need = sum(s for _, s in missing)
    progress.add_total(need)
    log_line(f"{reference} ({top.digest}): {len(missing)} of {len(blobs)} blob(s) to copy, {_mib(need)}")

    def move(item):
        digest, size = item
        check()
        if (isinstance(source, RemoteEnd) and isinstance(destination, RemoteEnd)
                and source.remote.same_registry(destination.remote)
                and destination.remote.mount(digest, source.remote.repository)):
            progress.add(size)
            return
        if destination.link_existing(digest):
            progress.add(size)
            return
        reader = source.open_blob(digest)
        counted = [0]

        def on_bytes(n):
            counted[0] += n
            progress.add(n)
            if counted[0] % (64 * PIECE) < n:
                check()

        try:
            destination.write_blob(digest, size, reader, on_bytes)
        except BaseException:
            progress.add(-counted[0])  # a retry sends these bytes again
            raise
        finally:
            reader.close()

    workers = max(1, min(settings.MIRROR_PARALLEL_BLOBS, len(missing)))
    if isinstance(destination, LocalEnd) and connection.vendor == "sqlite":
        workers = 1  # SQLite takes one writer at a time anyway
    if workers == 1:
        for item in missing:
            move(item)
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="mirror-blob") as pool:
            for future in [pool.submit(_in_thread, move, item) for item in missing]:
                future.result()
    check()
    for doc in before:
        got = destination.put_manifest(doc.digest, doc.body, doc.media_type, doc)
        if got != doc.digest:
            raise Permanent(f"{destination.name} stored manifest {doc.digest} as {got}")
    got = destination.put_manifest(target_reference, top.body, top.media_type)
    if got != top.digest:
        raise Permanent(f"{destination.name}:{target_reference} has digest {got}, the source {top.digest}")
    stored = destination.manifest_digest(target_reference)
    if stored != top.digest:
        raise Transient(f"{destination.name}:{target_reference} reads back {stored}, expected {top.digest}")
    log_line(f"{destination.name}:{target_reference} = {top.digest} (verified)")
    return top.digest


def _in_thread(fn, item):
    try:
        return fn(item)
    finally:
        connection.close()
