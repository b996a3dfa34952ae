"""An S3 emulator for the tests: moto's standalone server (`moto_server`) on a free port
of 127.0.0.1. It speaks the S3 REST API (SigV4, multipart uploads with S3's 5 MiB
minimum part size, presigned URLs), so MSR's S3 store runs against it exactly as it
would against AWS S3 or MinIO; nothing of boto3 is patched.

`atomic=True` runs it through tests/fixtures/moto_atomic.py, whose writes are serialized so
that conditional writes (If-None-Match: *, If-Match) are atomic as on a real store: the
leases of a region's nodes (tests/region.py) race on them."""

import os
import sys
import uuid
from pathlib import Path

import boto3

from tests.processes import Process, free_port

MOTO = str(Path(sys.executable).with_name("moto_server"))
CREDENTIALS = {"aws_access_key_id": "msr-test", "aws_secret_access_key": "msr-test-secret",
               "region_name": "us-east-1"}


REPOSITORY = Path(__file__).resolve().parent.parent


class S3Emulator:
    def __init__(self, log_dir: Path, atomic: bool = False):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        if atomic:
            argv = [sys.executable, "-m", "tests.fixtures.moto_atomic", "-H", "127.0.0.1", "-p", str(port)]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY),
                                                                            os.environ.get("PYTHONPATH")]))}
        else:
            argv, env = [MOTO, "-H", "127.0.0.1", "-p", str(port)], None
        self.process = Process(argv, env, log_dir / f"moto-{port}.log")
        self.process.wait_http(f"{self.url}/")
        self.client = boto3.client("s3", endpoint_url=self.url, **CREDENTIALS)

    def bucket(self) -> str:
        name = f"msr-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def env(self, bucket: str, **extra) -> dict:
        """The environment that points an MSR deployment at `bucket`."""
        return {"MSR_STORAGE": "s3", "MSR_S3_BUCKET": bucket, "MSR_S3_ENDPOINT_URL": self.url,
                "MSR_S3_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
                "MSR_S3_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
                "MSR_S3_ADDRESSING_STYLE": "path", "MSR_S3_PART_SIZE": str(5 * 1024 * 1024), **extra}

    def stop(self) -> None:
        self.process.stop()
