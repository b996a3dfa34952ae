"""A region of cache nodes as real processes (issue 18): N nodes of one cache name on one
shared S3 store (moto, with atomic conditional writes: tests/fixtures/moto_atomic.py),
behind Debian's nginx as the region's one address (round robin), filling from an upstream
the test gives (a FaultProxy in front of MSR, which counts and can slow the fills).

Every process is started here and stopped by its process id."""

import grp
import hashlib
import json
import os
import pwd
import time
from dataclasses import dataclass
from pathlib import Path

import botocore.exceptions
import requests

from tests.processes import Process, free_port, start_cache
from tests.s3 import CREDENTIALS, S3Emulator

NGINX = "/usr/sbin/nginx"

NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format region escape=json '{{"request":"$request","status":"$status","bytes":"$body_bytes_sent",'
                                  '"upstream":"$upstream_addr","upstream_status":"$upstream_status"}}';
    access_log {prefix}/access.log region;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream region {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://region;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The node names itself in its challenge from the Host it was asked by.
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            # Streams both ways: a fill's bytes reach the client as the node has them, and a
            # node cut mid-body cuts the client's body (never a whole body from a buffer).
            proxy_buffering off;
            proxy_request_buffering off;
            # A node that is down: the request goes to the next one (GET/HEAD only: nginx
            # never sends a non-idempotent request again).
            proxy_next_upstream error timeout;
            proxy_connect_timeout 2s;
            proxy_read_timeout 120s;
        }}
    }}
}}
"""


class Nginx:
    """nginx in the foreground with everything (config, pid, logs, temp files) under
    `prefix`, balancing round robin over `backends` (host:port)."""

    def __init__(self, prefix: Path, backends: list[str], log_dir: Path):
        self.prefix = prefix
        prefix.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Workers of a master started as root would run as `nobody`; the test's own user
        # owns the prefix.
        user = (f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
                if os.geteuid() == 0 else "")
        servers = "\n".join(f"        server {backend};" for backend in backends)
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, prefix=prefix, servers=servers, port=self.port))
        log_dir.mkdir(parents=True, exist_ok=True)
        # -e: the log of the start itself, before the configuration's error_log is read.
        self.process = Process([NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
                               None, log_dir / f"nginx-{self.port}.log")
        self.process.wait_http(f"{self.url}/healthz")

    def access(self) -> list[dict]:
        """The requests nginx answered, one dict a request (request, status, bytes,
        upstream: the node(s) asked, upstream_status). Clients of an insecure registry try
        TLS first: nginx logs their ClientHello as a request line of raw bytes."""
        try:
            text = (self.prefix / "access.log").read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.split("\n")[:-1]]  # the last: empty, or being written

    def stop(self) -> None:
        self.process.stop()


@dataclass
class Node:
    index: int
    port: int
    data: Path
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Region:
    """`nodes` cache nodes named `name` on one bucket prefix, and nginx in front of them
    (`url`: the region's one address). The nodes reach MSR at `msr` (keys, tokens,
    manifests) and fill from `upstream`."""

    def __init__(self, name: str, msr: str, upstream: str, s3: S3Emulator, directory: Path, log_dir: Path,
                 nodes=3, max_size="12M", lease_ttl="3s", evict_interval=1, threads=24):
        self.name, self.msr, self.upstream, self.s3 = name, msr, upstream, s3
        self.log_dir = log_dir
        self.max_size, self.lease_ttl, self.evict_interval, self.threads = max_size, lease_ttl, evict_interval, threads
        self.bucket = s3.bucket()
        self.prefix = f"region-{name}"
        self.store = f"s3://{self.bucket}/{self.prefix}"
        self.nodes = [Node(i, free_port(), directory / f"node{i}") for i in range(nodes)]
        try:
            for node in self.nodes:
                self.start(node)
            self.nginx = Nginx(directory / "nginx", [node.address for node in self.nodes], log_dir)
        except BaseException:
            self.stop()
            raise
        self.url = self.nginx.url

    # -- processes ---------------------------------------------------------------------------

    def start(self, node: Node) -> None:
        """Start (or start again, on its data dir and port) one node of the region."""
        if node.process is not None:  # again: the log of the previous run stays beside it
            log = node.process.log_path
            log.rename(log.with_name(f"{log.stem}.{time.time_ns()}.log"))
        env = {"MSR_CACHE_S3_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
               "MSR_CACHE_S3_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
               "MSR_CACHE_EVICT_INTERVAL": str(self.evict_interval)}
        args = ["--store", self.store, "--s3-endpoint", self.s3.url, "--s3-region", CREDENTIALS["region_name"],
                "--s3-addressing-style", "path", "--node-url", node.url, "--lease-ttl", self.lease_ttl,
                "--max-size", self.max_size]
        # One process a node: what a node does across its own processes is tests/test_caches.py's.
        node.process, _ = start_cache(self.name, self.msr, node.data, self.log_dir, upstream=self.upstream,
                                      workers=1, threads=self.threads, extra_env=env, extra_args=args,
                                      port=node.port)

    def kill(self, node: Node) -> None:
        """SIGKILL the node (its gunicorn master and worker): a crash."""
        node.process.kill()

    def stop(self) -> None:
        if getattr(self, "nginx", None) is not None:
            self.nginx.stop()
        for node in self.nodes:
            if node.process is not None:
                node.process.stop()

    def node_of(self, url: str) -> Node:
        return next(node for node in self.nodes if node.url == url.rstrip("/"))

    # -- the shared store ----------------------------------------------------------------------

    def keys(self, under: str = "") -> list[str]:
        return self.s3.keys(self.bucket, f"{self.prefix}/{under}")

    def blob_key(self, digest: str) -> str:
        algorithm, _, encoded = digest.partition(":")
        return f"{self.prefix}/blobs/{algorithm}/{encoded[:2]}/{encoded}"

    def blob_keys(self, digest: str) -> list[str]:
        """Every object under blobs/ that names `digest` (one at most, at its place)."""
        encoded = digest.partition(":")[2]
        return [key for key in self.keys("blobs/") if encoded in key]

    def blobs_size(self) -> int:
        pages = self.s3.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                         Prefix=f"{self.prefix}/blobs/")
        return sum(item["Size"] for page in pages for item in page.get("Contents", []))

    def _get(self, key: str) -> bytes | None:
        try:
            return self.s3.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except botocore.exceptions.ClientError as e:
            if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def blob(self, digest: str) -> bytes | None:
        return self._get(self.blob_key(digest))

    def stored(self, digest: str) -> str | None:
        """The digest of the bytes the bucket holds for `digest` (None: no object)."""
        data = self.blob(digest)
        return None if data is None else "sha256:" + hashlib.sha256(data).hexdigest()

    def wait_stored(self, digest: str, timeout=15) -> str | None:
        """`stored`, once the object is there: a filler writes it to the bucket after its
        clients got their (verified) bodies from its local copy, so it lands a moment later."""
        deadline = time.monotonic() + timeout
        while (found := self.stored(digest)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return found

    def lease(self, digest: str) -> dict | None:
        """The digest's fill lease ({"owner", "node", "url", "expires", "length"}), if held."""
        document = self._get(f"{self.prefix}/leases/{digest.replace(':', '-')}.json")
        return None if document is None else json.loads(document)

    def wait_lease(self, digest: str, timeout=20) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lease = self.lease(digest)
            if lease is not None:
                return lease
            time.sleep(0.05)
        raise AssertionError(f"no fill lease for {digest} in {timeout}s: {self.keys()}")

    # -- the nodes' own account ----------------------------------------------------------------

    def own_counters(self, node: Node) -> dict:
        """The node's own counters (/stats "self"), asked of the node itself."""
        return requests.get(f"{node.url}/stats", timeout=5).json()["self"]

    def own_upstream_fetches(self) -> int:
        """The sum of every running node's own upstream fetches."""
        return sum(self.own_counters(node)["upstream_fetches"] for node in self.nodes
                   if node.process is not None and node.process.popen.poll() is None)
