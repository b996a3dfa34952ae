"""Blob storage: the filesystem (default) or an S3-compatible bucket (MSR_STORAGE=s3).
The operations both provide are listed in msr/storage/base.py."""

from django.conf import settings

from msr.storage.base import CHUNK_SIZE, STORAGE_ERRORS, DigestMismatch, UploadBusy
from msr.storage.filesystem import FilesystemStorage

__all__ = ["CHUNK_SIZE", "STORAGE_ERRORS", "DigestMismatch", "FilesystemStorage", "UploadBusy", "get_storage", "make_storage"]

_storage = None


def make_storage():
    if settings.STORAGE_BACKEND == "s3":
        from msr.storage.s3 import S3Storage

        return S3Storage(
            bucket=settings.S3_BUCKET, prefix=settings.S3_PREFIX, endpoint_url=settings.S3_ENDPOINT_URL,
            public_endpoint_url=settings.S3_PUBLIC_ENDPOINT_URL, region=settings.S3_REGION,
            access_key=settings.S3_ACCESS_KEY_ID, secret_key=settings.S3_SECRET_ACCESS_KEY,
            addressing_style=settings.S3_ADDRESSING_STYLE, part_size=settings.S3_PART_SIZE,
            redirect=settings.S3_REDIRECT, redirect_ttl=settings.S3_REDIRECT_TTL_SECONDS,
        )
    return FilesystemStorage(settings.STORAGE_DIR, fsync=settings.STORAGE_FSYNC)


def get_storage():
    global _storage
    if _storage is None:
        _storage = make_storage()
    return _storage
