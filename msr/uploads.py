"""Blob uploads: start, append, complete, cancel (distribution spec, "Pushing blobs").

The bytes go to the storage's upload area while no database transaction is open; the
digest is verified and the blob published before any row says it exists. On every
failure of completion, the upload is discarded whole: nothing half-written stays.
"""

import re
import uuid

from django.db import transaction

from msr import services
from msr.exceptions import DigestMismatch, InvalidDigest, InvalidRange, LengthMismatch, UploadLost, UploadNotFound
from msr.models import Repository, Upload
from msr.references import is_valid_digest, split_name
from msr.storage import get_storage

# The spec writes "<start>-<end>"; some clients prefix the unit as in HTTP.
CONTENT_RANGE_RE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")


def start_upload(repository: Repository, user) -> Upload:
    upload = Upload.objects.create(repository=repository, user=user)
    try:
        get_storage().start_upload(str(upload.id))
    except BaseException:  # the store is unavailable: no row without its upload area
        Upload.objects.filter(pk=upload.pk).delete()
        raise
    return upload


def find_upload(name: str, upload_id: str) -> Upload:
    namespace, rest = split_name(name)
    try:
        upload_id = str(uuid.UUID(upload_id))
    except ValueError:
        raise UploadNotFound(upload_id) from None
    upload = Upload.objects.select_related("repository__namespace").filter(
        pk=upload_id, repository__namespace__name=namespace, repository__name=rest
    ).first()
    if upload is None or get_storage().upload_size(str(upload.id)) is None:
        raise UploadNotFound(upload_id)
    return upload


def upload_offset(upload: Upload) -> int:
    size = get_storage().upload_size(str(upload.id))
    if size is None:
        raise UploadNotFound(str(upload.id))
    return size


def parse_content_range(value: str) -> tuple[int, int]:
    match = CONTENT_RANGE_RE.match(value.strip())
    if not match:
        raise InvalidRange(detail={"Content-Range": value})
    start, end = int(match.group(1)), int(match.group(2))
    if end < start:
        raise InvalidRange(detail={"Content-Range": value})
    return start, end


def append_chunk(upload: Upload, chunks, content_range: str | None, content_length: int | None) -> int:
    """Append a chunk; with Content-Range it must start where the upload ends (416)."""
    storage = get_storage()
    upload_id = str(upload.id)
    with storage.locked(upload_id) as fd:  # UploadBusy when another request writes
        offset = upload_offset(upload)
        if content_range:
            start, end = parse_content_range(content_range)
            if start != offset:
                raise InvalidRange(
                    message="chunk out of order", detail={"expected_start": offset, "start": start}
                )
            if content_length is not None and end - start + 1 != content_length:
                raise LengthMismatch(
                    detail={"Content-Range": content_range, "Content-Length": content_length}
                )
        return storage.append(fd, upload_id, chunks)


def complete_upload(upload: Upload, digest: str, chunks) -> int:
    """Append the last bytes (if any), verify `digest`, publish and link the blob."""
    storage = get_storage()
    upload_id = str(upload.id)
    if not is_valid_digest(digest):
        cancel_upload(upload)
        raise InvalidDigest(digest, message="invalid or unsupported digest")
    try:
        with storage.locked(upload_id) as fd:
            storage.append(fd, upload_id, chunks)
            size = storage.commit_upload(fd, upload_id, digest)

            def republish() -> bool:
                # The blob was already stored, so these bytes stayed in the upload area,
                # and the garbage collector removed the stored copy before the link below
                # took the blob's lock: publish ours (hashed already, so this is quick).
                if storage.upload_size(upload_id) is None:
                    return False  # ours were the published bytes
                storage.commit_upload(fd, upload_id, digest)
                return True

            # Still holding the upload, so that `republish` can use its bytes.
            with transaction.atomic():
                services.link_blob(upload.repository, digest, size, republish)
                Upload.objects.filter(pk=upload.pk).delete()
    except (DigestMismatch, UploadLost):
        cancel_upload(upload)
        raise
    storage.discard_upload(upload_id)
    return size


def cancel_upload(upload: Upload) -> None:
    Upload.objects.filter(pk=upload.pk).delete()
    get_storage().discard_upload(str(upload.id))
