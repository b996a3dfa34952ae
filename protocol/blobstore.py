"""Blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW…), as MSR's S3 store and a
region's cache nodes both keep them: the storage contract's layout and reads, with no
Django and nothing of MSR, so a cache node (caches/region.py) uses it without loading MSR.

Keys under the prefix: `blobs/<algorithm>/<first two hex>/<hex>`, published blobs,
immutable, written whole (one PUT or a completed multipart upload: S3 never shows a part
of an object). What else lives under the prefix is the user's business (MSR's uploads,
a region's leases).

Conditional writes (`create`: If-None-Match: *, `replace`/`delete` with If-Match: the
ETag read) are what S3 (since 2024), MinIO and Ceph RGW offer instead of locks: two
writers racing for one key, one wins and the other gets 412.

boto3 is imported on first use: `import protocol.blobstore` costs nothing to a node on
its local disk.
"""

import json
import os
import threading
from email.utils import parsedate_to_datetime
from pathlib import Path

CHUNK = 1024 * 1024
NOT_FOUND = ("404", "NoSuchKey", "NotFound", "NoSuchUpload")
CONFLICT = ("412", "PreconditionFailed", "409", "ConditionalRequestConflict")


def missing(error) -> bool:
    """A botocore ClientError that says the key (or upload) is not there."""
    return error.response.get("Error", {}).get("Code") in NOT_FOUND


def conflicting(error) -> bool:
    """A conditional write refused: someone else wrote (or removed) the key first."""
    response = getattr(error, "response", None) or {}
    return (response.get("Error", {}).get("Code") in CONFLICT
            or response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412))


def parse_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` → (bucket, prefix). ValueError for anything else."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an S3 URL: {url!r} (expected s3://bucket/prefix)")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket or "/" in bucket or not all(c.isalnum() or c in "-._" for c in bucket):
        raise ValueError(f"not an S3 URL: {url!r} (expected s3://bucket/prefix)")
    return bucket, prefix.strip("/")


class S3Bucket:
    """A bucket and a prefix in it, with one botocore client per process."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 public_endpoint_url: str | None = None, region: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None,
                 addressing_style: str = "auto", max_pool_connections: int = 50):
        if addressing_style not in ("auto", "path", "virtual"):
            raise ValueError(f"addressing style {addressing_style!r}: expected auto, path or virtual")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url, self.public_endpoint_url = endpoint_url, public_endpoint_url or endpoint_url
        self._settings = dict(region_name=region or "us-east-1", aws_access_key_id=access_key or None,
                              aws_secret_access_key=secret_key or None)
        self._addressing_style, self._pool = addressing_style, max_pool_connections
        self._clients: dict = {}
        self._clients_lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.rstrip('/')}".rstrip("/")

    # botocore clients are thread-safe but must not cross a fork (gunicorn, Celery): one
    # per process, made on first use.
    def _client(self, public: bool = False):
        key = (os.getpid(), public)
        client = self._clients.get(key)
        if client is None:
            with self._clients_lock:
                client = self._clients.get(key)
                if client is None:
                    import boto3
                    from botocore.config import Config

                    config = Config(s3={"addressing_style": self._addressing_style}, signature_version="s3v4",
                                    max_pool_connections=self._pool,
                                    retries={"max_attempts": 5, "mode": "standard"})
                    client = boto3.session.Session().client(
                        "s3", endpoint_url=self.public_endpoint_url if public else self.endpoint_url,
                        config=config, **self._settings)
                    self._clients = {k: v for k, v in self._clients.items() if k[0] == os.getpid()}
                    self._clients[key] = client
        return client

    @property
    def s3(self):
        return self._client()

    @staticmethod
    def client_error():
        from botocore.exceptions import ClientError

        return ClientError

    # -- keys --------------------------------------------------------------------------

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def blob_key(self, digest: str) -> str:
        algorithm, _, encoded = digest.partition(":")
        return f"{self.prefix}blobs/{algorithm}/{encoded[:2]}/{encoded}"

    # -- blobs -------------------------------------------------------------------------

    def blob_head(self, digest: str) -> dict | None:
        """{"size", "modified" (epoch seconds)} of a published blob, None when absent."""
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self.blob_key(digest))
        except self.client_error() as e:
            if missing(e):
                return None
            raise
        return {"size": head["ContentLength"], "modified": head["LastModified"].timestamp()}

    def blob_size(self, digest: str) -> int | None:
        head = self.blob_head(digest)
        return None if head is None else head["size"]

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None):
        """The blob's bytes from `offset` (`length` of them, or to the end) as a stream
        (read(n), close()); FileNotFoundError when absent."""
        extra = {}
        if offset or length is not None:
            extra["Range"] = f"bytes={offset}-{'' if length is None else offset + length - 1}"
        return self._get_blob(digest, **extra)["Body"]

    def get_blob(self, digest: str):
        """(stream, size) of the whole blob in one request, None when absent."""
        try:
            answer = self._get_blob(digest)
        except FileNotFoundError:
            return None
        return answer["Body"], answer["ContentLength"]

    def _get_blob(self, digest: str, **extra) -> dict:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self.blob_key(digest), **extra)
        except self.client_error() as e:
            if missing(e):
                raise FileNotFoundError(digest) from None
            raise

    def presigned_blob_url(self, digest: str, ttl: int) -> str:
        """A presigned GET for the blob (computed locally, no request to S3)."""
        return self._client(public=True).generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.blob_key(digest)}, ExpiresIn=ttl)

    def delete_blob(self, digest: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self.blob_key(digest))

    def iter_blobs(self, with_modified: bool = False):
        """(digest, size) of every published blob; (digest, size, modified) if asked."""
        for item in self.list(f"{self.prefix}blobs/"):
            parts = item["Key"][len(self.prefix):].split("/")
            if len(parts) == 4:
                digest = f"{parts[1]}:{parts[3]}"
                yield (digest, item["Size"], item["LastModified"].timestamp()) if with_modified else (digest, item["Size"])

    def put_blob_file(self, digest: str, source: Path, transfer_config=None) -> None:
        """Publish a verified file as the blob (multipart above the transfer threshold:
        the object appears only when the upload completes)."""
        self.s3.upload_file(str(source), self.bucket, self.blob_key(digest), Config=transfer_config)

    def check(self) -> None:
        self.s3.head_bucket(Bucket=self.bucket)

    def list(self, prefix: str):
        """The objects (ListObjectsV2 entries) under a full key prefix."""
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    # -- small JSON documents, written conditionally ------------------------------------

    def read_json(self, key: str) -> tuple[dict | None, str | None, float]:
        """(document, ETag, age) of a small JSON object: age in seconds since it was last
        written, by the store's clock (its Last-Modified against the Date of the answer),
        so nodes whose clocks differ agree on it. (None, None, 0) when absent; the document
        is {} when the object holds no JSON object (it stays replaceable by its ETag)."""
        try:
            answer = self.s3.get_object(Bucket=self.bucket, Key=key)
        except self.client_error() as e:
            if missing(e):
                return None, None, 0.0
            raise
        try:
            document = json.loads(answer["Body"].read())
        except ValueError:
            document = {}
        age = 0.0
        date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        if date and answer.get("LastModified"):
            try:
                age = max(0.0, parsedate_to_datetime(date).timestamp() - answer["LastModified"].timestamp())
            except (TypeError, ValueError):
                pass
        return (document if isinstance(document, dict) else {}), answer["ETag"], age

    def write_json(self, key: str, document: dict, *, create: bool = False, etag: str | None = None) -> str | None:
        """Write a small JSON object: only if absent (`create`), only if still at `etag`,
        or unconditionally. Its new ETag, or None when the condition failed."""
        extra = {"IfNoneMatch": "*"} if create else {"IfMatch": etag} if etag else {}
        try:
            answer = self.s3.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(document).encode(),
                                        ContentType="application/json", **extra)
        except self.client_error() as e:
            if (create or etag) and (conflicting(e) or missing(e)):
                return None
            raise
        return answer.get("ETag")

    def delete_json(self, key: str, etag: str | None = None) -> bool:
        """Remove a small object (only if still at `etag`, when given); False when the
        condition failed."""
        extra = {"IfMatch": etag} if etag else {}
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=key, **extra)
        except self.client_error() as e:
            if missing(e):
                return True
            if etag and conflicting(e):
                return False
            raise
        return True
