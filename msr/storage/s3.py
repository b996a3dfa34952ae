"""Content-addressed blob storage in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW…).

Keys under MSR_S3_PREFIX:
    blobs/<algorithm>/<first two hex>/<hex>    published blobs, immutable (the filesystem
                                              store's layout, so backups look alike)
    uploads/<upload id>/state                 JSON: multipart upload id, parts, size, tail
    uploads/<upload id>/tail-<random>         bytes received after the last full part
    uploads/<upload id>/data                  the assembled upload, before it is verified
    gc-aside/<algorithm>-<hex>.<random>       bytes the collector is deleting

An upload streams into an S3 multipart upload in parts of MSR_S3_PART_SIZE (memory per
upload in flight: about two parts). S3 wants every part but the last to be at least 5 MiB, and a client's
chunks (PATCH requests) may be any size and reach any web process on any host, so what
is left after the last full part when a request ends is kept as a small `tail` object
and read back by the next request. The `state` object is written last, so it always
describes a consistent upload: a request that dies mid-way leaves the previous state
(a re-sent part number simply replaces the orphan). The lock that makes one request at a
time append is a lease row in the database (`StorageLease`), as S3 has no locks.

Completing: a blob smaller than one part is verified from memory and written with one
PUT. A multipart upload is bound to the key it was started for, and the digest is known
only at the end, so it is completed into `uploads/<id>/data`, verified (the SHA-256 was
computed as the bytes arrived when they all arrived in this process; otherwise the
object is read back and hashed) and copied server-side to its blob key; that is what
Distribution's S3 driver does too. Nothing is visible under `blobs/` before its digest
has been checked.

Reads: `blob_url` gives a presigned GET URL (MSR_S3_REDIRECT_TTL), so clients download
layers from the bucket rather than through MSR; `open_blob` streams through MSR when
redirects are off.
"""

import hashlib
import json
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from msr.storage.base import CHUNK_SIZE, DigestMismatch, HasherCache, UploadBusy
from protocol.blobstore import S3Bucket, missing as _missing

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
LEASE_SECONDS = 60
LEASE_RENEW_SECONDS = 15


class S3Upload:
    """A locked upload: its state as read under the lock, and whether the lease that
    locks it was lost (expired and taken by another request: stop writing)."""

    def __init__(self, upload_id: str, state: dict, lost: threading.Event):
        self.upload_id, self.state, self.lost = upload_id, state, lost

    def check(self) -> None:
        if self.lost.is_set():
            raise UploadBusy(self.upload_id)

    @property
    def size(self) -> int:
        return self.state["size"]


class S3Storage(S3Bucket):
    """MSR's blob store on a bucket: the layout and reads of protocol.blobstore (which a
    region's cache nodes share), uploads as multipart uploads, redirects to presigned GETs."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 public_endpoint_url: str | None = None, region: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None,
                 addressing_style: str = "auto", part_size: int = 16 * 1024 * 1024,
                 redirect: bool = True, redirect_ttl: int = 1200):
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part size {part_size}: S3 needs at least {MIN_PART_SIZE} bytes")
        super().__init__(bucket, prefix, endpoint_url=endpoint_url, public_endpoint_url=public_endpoint_url,
                         region=region, access_key=access_key, secret_key=secret_key,
                         addressing_style=addressing_style)
        self.part_size = part_size
        self.redirect, self.redirect_ttl = redirect, redirect_ttl
        self._hashers = HasherCache()
        self._transfer = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size,
                                        max_concurrency=4)

    # -- keys --------------------------------------------------------------------------

    def _upload_key(self, upload_id: str, name: str) -> str:
        return f"{self.prefix}uploads/{upload_id}/{name}"

    # -- blobs (the rest: protocol.blobstore.S3Bucket) -----------------------------------

    def blob_url(self, digest: str) -> str | None:
        """A presigned GET (computed locally, no request to S3); None with redirects off."""
        if not self.redirect:
            return None
        return self.presigned_blob_url(digest, self.redirect_ttl)

    def store_blob(self, digest: str, source: Path) -> None:
        self.put_blob_file(digest, source, self._transfer)

    def _list(self, prefix: str):
        return self.list(prefix)

    def _delete_prefix(self, prefix: str) -> None:
        keys = [{"Key": item["Key"]} for item in self._list(prefix)]
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})

    # -- uploads: state ------------------------------------------------------------------

    def _read_state(self, upload_id: str) -> dict | None:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self._upload_key(upload_id, "state"))["Body"]
        except ClientError as e:
            if _missing(e):
                return None
            raise
        return json.loads(body.read())

    def _write_state(self, upload_id: str, state: dict) -> None:
        state["t"] = time.time()
        self.s3.put_object(Bucket=self.bucket, Key=self._upload_key(upload_id, "state"),
                           Body=json.dumps(state).encode())

    def start_upload(self, upload_id: str) -> None:
        self._write_state(upload_id, {"mpu": None, "parts": [], "tail": None, "tail_size": 0,
                                      "size": 0, "sha256": None, "staged": False})

    def upload_size(self, upload_id: str) -> int | None:
        state = self._read_state(upload_id)
        return None if state is None else state["size"]

    def upload_last_write(self, upload_id: str) -> float | None:
        state = self._read_state(upload_id)
        if state is not None:
            return state["t"]
        # Objects without a state (a request died before writing the first one).
        times = [item["LastModified"].timestamp() for item in self._list(self._upload_key(upload_id, ""))]
        return max(times) if times else None

    def list_uploads(self) -> list[str]:
        ids = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}uploads/", Delimiter="/"):
            ids += [p["Prefix"].rstrip("/").rpartition("/")[2] for p in page.get("CommonPrefixes", [])]
        return ids

    def handle_size(self, handle: S3Upload) -> int:
        return handle.size

    # -- uploads: the lease ----------------------------------------------------------------

    @contextmanager
    def locked(self, upload_id: str):
        """Hold the upload's lease (across hosts; msr/leases.py) or raise UploadBusy;
        FileNotFoundError when there is no such upload. The lease is renewed while held,
        through long appends and through completion's server-side copy alike."""
        from msr.leases import LeaseTaken, lease

        with ExitStack() as stack:
            try:
                held = stack.enter_context(lease(f"upload:{upload_id}", LEASE_SECONDS, LEASE_RENEW_SECONDS))
            except LeaseTaken:
                raise UploadBusy(upload_id) from None
            state = self._read_state(upload_id)
            if state is None:
                raise FileNotFoundError(upload_id)
            yield S3Upload(upload_id, state, held.lost)

    # -- uploads: bytes ----------------------------------------------------------------------

    def _read_tail(self, state: dict) -> bytes:
        if not state["tail"]:
            return b""
        return self.s3.get_object(Bucket=self.bucket, Key=state["tail"])["Body"].read()

    def _upload_part(self, handle: S3Upload, data) -> None:
        state = handle.state
        if state["mpu"] is None:
            state["mpu"] = self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=self._upload_key(handle.upload_id, "data"))["UploadId"]
        number = len(state["parts"]) + 1
        etag = self.s3.upload_part(Bucket=self.bucket, Key=self._upload_key(handle.upload_id, "data"),
                                   UploadId=state["mpu"], PartNumber=number, Body=data)["ETag"]
        state["parts"].append([number, etag, len(data)])

    def append(self, handle: S3Upload, upload_id: str, chunks) -> int:
        """Append the byte chunks; full parts go to S3 as they fill, the rest becomes the
        tail. What arrived stays even if the chunks stop early (a client gone)."""
        state = handle.state
        if state["staged"]:
            raise UploadBusy(upload_id)  # being completed; no more bytes
        size = state["size"]
        hasher = self._hashers.take(upload_id, size) or (hashlib.sha256() if size == 0 else None)
        old_tail = state["tail"]
        buffer = bytearray(self._read_tail(state))
        try:
            for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                while len(buffer) >= self.part_size:
                    # The full buffer becomes the part and the (small) rest a new buffer:
                    # no copy of the part itself.
                    part, buffer = buffer, bytearray(memoryview(buffer)[self.part_size:])
                    del part[self.part_size:]
                    try:
                        self._upload_part(handle, part)
                    except BaseException:
                        buffer = part + buffer  # not sent: the bytes stay for the tail
                        raise
                handle.check()
        finally:
            # A writer that lost its lease leaves the state to the request that took it.
            if size != state["size"] and not handle.lost.is_set():
                tail = None
                if buffer:
                    tail = self._upload_key(upload_id, f"tail-{uuid.uuid4().hex[:16]}")
                    self.s3.put_object(Bucket=self.bucket, Key=tail, Body=buffer)
                state.update(tail=tail, tail_size=len(buffer), size=size,
                             sha256=hasher.hexdigest() if hasher is not None else None)
                self._write_state(upload_id, state)
                if old_tail and old_tail != tail:
                    self.s3.delete_object(Bucket=self.bucket, Key=old_tail)
                if hasher is not None:
                    self._hashers.put(upload_id, size, hasher)
        return size

    def commit_upload(self, handle: S3Upload, upload_id: str, digest: str) -> int:
        """Verify the locked upload against `digest` and publish it as that blob.

        Raises DigestMismatch (the upload stays for the caller to discard). If the blob is
        already stored, the upload stays too (the caller may need it: see uploads.py)."""
        state = handle.state
        algorithm = digest.partition(":")[0]
        key = self.blob_key(digest)
        if state["mpu"] is None and not state["staged"]:
            data = self._read_tail(state)  # less than one part
            actual = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
            if actual != digest:
                raise DigestMismatch(digest, actual)
            if self.blob_size(digest) is None:
                handle.check()
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
                self._forget(upload_id)
            return len(data)
        if not state["staged"]:
            self._stage(handle)
        actual = self._staged_digest(upload_id, state, algorithm)
        if actual != digest:
            raise DigestMismatch(digest, actual)
        if self.blob_size(digest) is None:
            handle.check()
            self.s3.copy({"Bucket": self.bucket, "Key": self._upload_key(upload_id, "data")},
                         self.bucket, key, Config=self._transfer)
            self._forget(upload_id)
        return state["size"]

    def _stage(self, handle: S3Upload) -> None:
        """Send the tail as the last part and assemble the multipart upload."""
        state, upload_id = handle.state, handle.upload_id
        if state["tail"]:
            self._upload_part(handle, self._read_tail(state))
        self.s3.complete_multipart_upload(
            Bucket=self.bucket, Key=self._upload_key(upload_id, "data"), UploadId=state["mpu"],
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag, _ in state["parts"]]})
        old_tail = state["tail"]
        state.update(mpu=None, staged=True, tail=None, tail_size=0)
        self._write_state(upload_id, state)
        if old_tail:
            self.s3.delete_object(Bucket=self.bucket, Key=old_tail)

    def _staged_digest(self, upload_id: str, state: dict, algorithm: str) -> str:
        if algorithm == "sha256":
            hasher = self._hashers.take(upload_id, state["size"])
            if hasher is not None:
                self._hashers.put(upload_id, state["size"], hasher)
                return f"sha256:{hasher.hexdigest()}"
            if state["sha256"]:
                return f"sha256:{state['sha256']}"
        # The bytes came through another process: read them back.
        hasher = hashlib.new(algorithm)
        body = self.s3.get_object(Bucket=self.bucket, Key=self._upload_key(upload_id, "data"))["Body"]
        for chunk in body.iter_chunks(CHUNK_SIZE):
            hasher.update(chunk)
        digest = hasher.hexdigest()
        if algorithm == "sha256":
            state["sha256"] = digest
            self._write_state(upload_id, state)
        return f"{algorithm}:{digest}"

    def _forget(self, upload_id: str) -> None:
        """The upload is published: its state goes first (upload_size is None from then
        on), then its objects."""
        self._hashers.drop(upload_id)
        self.s3.delete_object(Bucket=self.bucket, Key=self._upload_key(upload_id, "state"))
        self._delete_prefix(self._upload_key(upload_id, ""))

    def discard_upload(self, upload_id: str) -> None:
        self._hashers.drop(upload_id)
        state = self._read_state(upload_id)
        if state and state["mpu"]:
            try:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self._upload_key(upload_id, "data"),
                                               UploadId=state["mpu"])
            except ClientError as e:
                if not _missing(e):
                    raise
        self._delete_prefix(self._upload_key(upload_id, ""))

    # -- garbage collection ------------------------------------------------------------

    def set_aside(self, digest: str) -> str | None:
        aside = f"{self.prefix}gc-aside/{digest.replace(':', '-', 1)}.{uuid.uuid4().hex[:12]}"
        try:
            self.s3.copy({"Bucket": self.bucket, "Key": self.blob_key(digest)}, self.bucket, aside,
                         Config=self._transfer)
        except ClientError as e:
            if _missing(e):
                return None
            raise
        self.s3.delete_object(Bucket=self.bucket, Key=self.blob_key(digest))
        return aside

    def put_back(self, digest: str, aside: str) -> None:
        if self.blob_size(digest) is None:
            self.s3.copy({"Bucket": self.bucket, "Key": aside}, self.bucket, self.blob_key(digest),
                         Config=self._transfer)
        self.drop_aside(aside)

    def drop_aside(self, aside: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=aside)

    def list_aside(self):
        for item in self._list(f"{self.prefix}gc-aside/"):
            name = item["Key"].rpartition("/")[2]
            yield item["Key"], name.rpartition(".")[0].replace("-", ":", 1)
