"""Content-addressed blob storage on a filesystem.

Layout under STORAGE_DIR:
    blobs/<algorithm>/<first two hex>/<hex>    published blobs, immutable
    uploads/<upload id>/data                  bytes received so far
    uploads/<upload id>/hashstate             "<offset> <sha256 hex of data[:offset]>"

An upload only ever grows by appending while its lock is held; it becomes a blob by an
atomic rename after its digest has been verified, so a reader never sees a partial or
wrong blob. Memory stays constant: bytes are streamed in CHUNK_SIZE pieces.
"""

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

from msr.storage.base import CHUNK_SIZE, DigestMismatch, HasherCache, UploadBusy

class FilesystemStorage:
    def __init__(self, root: Path, fsync: bool = True):
        self.root = Path(root)
        self.fsync = fsync
        self._hashers = HasherCache()

    # -- blobs -------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        return self.root / "blobs" / algorithm / encoded[:2] / encoded

    def blob_size(self, digest: str) -> int | None:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None):
        """The file at `offset`; the caller reads at most `length` (sendfile needs the
        real file)."""
        f = open(self.blob_path(digest), "rb")
        if offset:
            f.seek(offset)
        return f

    def blob_url(self, digest: str) -> None:
        return None  # served by MSR itself, with sendfile

    def delete_blob(self, digest: str) -> None:
        self.blob_path(digest).unlink(missing_ok=True)

    def iter_blobs(self):
        folder = self.root / "blobs"
        if not folder.is_dir():
            return
        for path in folder.glob("*/*/*"):
            if path.is_file():
                yield f"{path.parent.parent.name}:{path.name}", path.stat().st_size

    def store_blob(self, digest: str, source: Path) -> None:
        target = self.blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}")
        shutil.copyfile(source, partial)
        os.replace(partial, target)

    def check(self) -> None:
        """The store can take an upload: its folder exists (created as the first upload
        would) and is writable."""
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.root, prefix=".readyz-") as probe:
            probe.write(b"ok")
            probe.flush()

    # -- garbage collection: bytes set aside inside the deleting transaction -----------

    ASIDE = "gc-aside"

    def set_aside(self, digest: str) -> Path | None:
        folder = self.root / self.ASIDE
        folder.mkdir(parents=True, exist_ok=True)
        aside = folder / f"{digest.replace(':', '-', 1)}.{uuid.uuid4().hex[:12]}"
        try:
            os.rename(self.blob_path(digest), aside)  # atomic, same file system
        except FileNotFoundError:
            return None
        return aside

    def put_back(self, digest: str, aside: Path) -> None:
        """Back as the blob, unless a push published the same bytes meanwhile."""
        if self.blob_path(digest).exists():
            aside.unlink(missing_ok=True)
        else:
            os.rename(aside, self.blob_path(digest))

    def drop_aside(self, aside: Path) -> None:
        aside.unlink(missing_ok=True)

    def list_aside(self):
        folder = self.root / self.ASIDE
        if folder.is_dir():
            for aside in folder.iterdir():
                yield aside, aside.name.rpartition(".")[0].replace("-", ":", 1)

    # -- uploads -----------------------------------------------------------------------

    def _upload_dir(self, upload_id: str) -> Path:
        return self.root / "uploads" / upload_id

    def start_upload(self, upload_id: str) -> None:
        directory = self._upload_dir(upload_id)
        directory.mkdir(parents=True)
        (directory / "data").touch()

    def upload_size(self, upload_id: str) -> int | None:
        try:
            return (self._upload_dir(upload_id) / "data").stat().st_size
        except FileNotFoundError:
            return None

    def upload_last_write(self, upload_id: str) -> float | None:
        folder = self._upload_dir(upload_id)
        for path in (folder / "data", folder):
            try:
                return path.stat().st_mtime
            except FileNotFoundError:
                continue
        return None

    def list_uploads(self) -> list[str]:
        folder = self.root / "uploads"
        return [entry.name for entry in folder.iterdir()] if folder.is_dir() else []

    def handle_size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    @contextmanager
    def locked(self, upload_id: str):
        """Hold the upload's write lock (across processes) or raise UploadBusy."""
        path = self._upload_dir(upload_id) / "data"
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise UploadBusy(upload_id) from None
                raise
            yield fd
        finally:
            os.close(fd)

    def append(self, fd: int, upload_id: str, chunks) -> int:
        """Append the byte chunks to the locked upload; return the new size.

        If the chunks stop early (the client went away), what arrived stays: the upload's
        size tells the client where to resume, as the spec's status request does."""
        offset = os.fstat(fd).st_size
        hasher = self._hashers.take(upload_id, offset)
        if hasher is None:
            hasher = self._hash_prefix(upload_id, offset)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    hasher.update(view[:written])
                    view = view[written:]
                    offset += written
        finally:
            self._hashers.put(upload_id, offset, hasher)
            self._write_hashstate(upload_id, offset, hasher)
        return offset

    def _hash_prefix(self, upload_id: str, offset: int):
        """SHA-256 state of the upload's first `offset` bytes, rehashed from disk (the
        upload moved to this process between chunks)."""
        hasher = hashlib.sha256()
        with open(self._upload_dir(upload_id) / "data", "rb") as f:
            remaining = offset
            while remaining:
                chunk = f.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    break
                hasher.update(chunk)
                remaining -= len(chunk)
        return hasher

    def _write_hashstate(self, upload_id: str, offset: int, hasher) -> None:
        path = self._upload_dir(upload_id) / "hashstate"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{offset} {hasher.hexdigest()}")
        os.replace(tmp, path)

    def _digest_of_upload(self, upload_id: str, size: int, algorithm: str) -> str:
        if algorithm == "sha256":
            hasher = self._hashers.take(upload_id, size)
            if hasher is not None:
                self._hashers.put(upload_id, size, hasher)
                return f"sha256:{hasher.hexdigest()}"
            try:
                offset, hexdigest = (self._upload_dir(upload_id) / "hashstate").read_text().split()
                if int(offset) == size:
                    return f"sha256:{hexdigest}"
            except (FileNotFoundError, ValueError):
                pass
        hasher = hashlib.new(algorithm)
        with open(self._upload_dir(upload_id) / "data", "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                hasher.update(chunk)
        return f"{algorithm}:{hasher.hexdigest()}"

    def commit_upload(self, fd: int, upload_id: str, digest: str) -> int:
        """Verify the locked upload against `digest` and publish it as that blob.

        Raises DigestMismatch (the upload stays for the caller to discard)."""
        size = os.fstat(fd).st_size
        actual = self._digest_of_upload(upload_id, size, digest.partition(":")[0])
        if actual != digest:
            raise DigestMismatch(digest, actual)
        if self.fsync:
            os.fsync(fd)
        target = self.blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Same digest, same bytes: if the blob exists, the upload is simply dropped.
        if not target.exists():
            os.replace(self._upload_dir(upload_id) / "data", target)
            if self.fsync:
                _fsync_dir(target.parent)
        return size

    def discard_upload(self, upload_id: str) -> None:
        self._hashers.drop(upload_id)
        shutil.rmtree(self._upload_dir(upload_id), ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
