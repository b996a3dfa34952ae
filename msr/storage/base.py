"""What every blob store provides, and the pieces the stores share.

A store keeps two things: published blobs, immutable and addressed by digest, and
uploads in progress, which only grow by appending while their lock is held and become a
blob only after their digest has been verified (a reader never sees a partial or wrong
blob). The operations, implemented by `FilesystemStorage` and `S3Storage` and checked
for both by tests/test_storage_contract.py:

blobs
    blob_size(digest) -> int | None          None when absent
    open_blob(digest, offset=0, length=None)  read() from `offset`, at most `length`
                                              bytes wanted; FileNotFoundError
    blob_url(digest) -> str | None            a URL the client may fetch the bytes from
                                              directly (S3: presigned), or None
    delete_blob(digest)
    iter_blobs() -> (digest, size)...         every stored blob (backup)
    store_blob(digest, path)                  put a verified file as that blob (restore)
uploads
    start_upload(id); upload_size(id) -> int | None; upload_last_write(id) -> float | None
    locked(id) -> context giving a handle     raises UploadBusy when held elsewhere
    append(handle, id, chunks) -> new size    what arrived stays even if chunks stop early
    handle_size(handle) -> int
    commit_upload(handle, id, digest) -> size DigestMismatch leaves the upload to discard;
                                              if the blob was already stored, the upload
                                              stays (upload_size is not None) and the
                                              stored bytes are kept
    discard_upload(id); list_uploads() -> ids
garbage collection (bytes leave inside the deleting transaction, put back if it fails)
    set_aside(digest) -> token | None; put_back(digest, token); drop_aside(token)
    list_aside() -> (token, digest)...
health
    check()                                   raises when the store cannot be used
"""

import hashlib
import threading
from collections import OrderedDict

# The store reports these two as the registry core does (msr/exceptions.py); they are
# exported from here too, for the stores and their callers.
from msr.exceptions import DigestMismatch, UploadBusy

CHUNK_SIZE = 1024 * 1024


def _storage_errors() -> tuple:
    errors = [OSError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        pass
    else:
        errors += [BotoCoreError, ClientError]
    return tuple(errors)


# What a store raises when it cannot do its job right now (a full or read-only disk, an
# unreachable or refusing bucket): the registry answers 503 UNAVAILABLE, not 500.
STORAGE_ERRORS = _storage_errors()

__all__ = ["CHUNK_SIZE", "STORAGE_ERRORS", "DigestMismatch", "HasherCache", "UploadBusy"]


class HasherCache:
    """SHA-256 state of recent uploads in this process, so that a chunked upload that
    keeps its connection (and so its worker) is hashed once, as it arrives. Python cannot
    serialise a hash state; another process falls back to re-reading the bytes."""

    def __init__(self, capacity=256):
        self._entries: OrderedDict[str, tuple[int, "hashlib._Hash"]] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity

    def take(self, upload_id: str, offset: int):
        with self._lock:
            entry = self._entries.pop(upload_id, None)
        if entry and entry[0] == offset:
            return entry[1]
        return None

    def put(self, upload_id: str, offset: int, hasher) -> None:
        with self._lock:
            self._entries[upload_id] = (offset, hasher)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        with self._lock:
            self._entries.pop(upload_id, None)


