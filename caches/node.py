"""The cache node (`msr cache`): a small WSGI service in a region, with no database.

It serves `GET/HEAD /v2/<name>/blobs/<digest>?grant=<grant>`:
1. verify the grant offline: signature against MSR's JWKS, audience = this cache,
   not expired, repository and digest equal to the path; refuse anything else (401/403);
2. hit: send the file from disk (sendfile through gunicorn's file wrapper), with Range;
3. miss: take the digest's lock (flock: one fetch per digest across the node's
   processes); a fill thread fetches from the upstream (MSR or a parent cache), presenting
   the same grant, into a partial file at the upstream's pace, hashing it, and publishes
   the file by rename only if size and digest match. Every request for the digest (the
   one that started the fill, and those that arrive meanwhile, in any process of the
   node) is served from the partial file as it grows, so one slow reader delays nobody.
   The last byte is held back until the digest is verified, so a client never receives a
   complete body of wrong bytes: a mismatch or a cut upstream ends the response short.
Also: `/healthz`, `/metrics` (Prometheus text), `/stats` (JSON, read by MSR's health
check), `POST /purge` (a purge token from MSR), and eviction by TTL and LRU size budget.

Every blob request is logged (one JSON object per line, or text at a terminal / MSR_LOG_FORMAT=text)
with the request id MSR put in the redirect (`rid`), or the `X-Request-ID` of a child
cache, which is passed on to the upstream: one id follows a layer through the chain.

Configuration comes from the environment (set by `msr cache`): MSR_CACHE_NAME,
MSR_CACHE_MSR_URL, MSR_CACHE_UPSTREAM, MSR_CACHE_DATA_DIR, MSR_CACHE_MAX_SIZE,
MSR_CACHE_TTL, MSR_LOG_FORMAT, MSR_LOG_LEVEL.
"""

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs

import jwt
import requests
from gunicorn import glogging

from caches.endpoint import (MANIFEST_PATH_RE, MANIFEST_ROUTE, RegionalEndpoint, error_response as _error,
                             kept_alive_session, write_atomically)
from caches.region import (DEFAULT_PEER_NETWORKS, HEARTBEAT_SECONDS, RegionStore, lease_name, node_id,
                           parse_networks, peer_allowed, stats_document as region_stats)
from protocol import blobstore, grants, requestids
from protocol.errors import error_body
from protocol.logformat import FORMATTERS, JsonFormatter, resolve_format
from protocol.ranges import LimitedFile, RangeNotSatisfiable, parse_range

log = logging.getLogger("msr.cache")
access_log = logging.getLogger("msr.cache.access")
CHUNK = 1024 * 1024
BLOB_PATH_RE = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}))$")
BLOB_ROUTE = "/v2/<name>/blobs/<digest>"
OTHER_ROUTES = frozenset({"/healthz", "/stats", "/metrics", "/purge"})
COUNTERS = ("hits", "misses", "bytes_from_disk", "bytes_from_upstream", "upstream_fetches",
            "upstream_failures", "refused", "peer_fetches", "bytes_from_peers")
# A request from another node of the region for a fill in progress here: answered from
# the partial file (or the store), never the start of a fill.
FOLLOW_HEADER = "HTTP_X_MSR_REGION_FOLLOW"
# How long a region's node keeps a fill's verified copy after its fill (its requests
# finish from it; the region's store has the blob by then).
VERIFIED_COPY_SECONDS = 60

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(value: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]?)i?B?", value.strip().upper())
    if not match:
        raise ValueError(f"not a size: {value!r} (e.g. 50G, 500M)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parse_duration(value: str) -> int:
    match = re.fullmatch(r"(\d+)([smhd]?)", value.strip())
    if not match:
        raise ValueError(f"not a duration: {value!r} (e.g. 24h, 30m)")
    return int(match.group(1)) * _TIME_UNITS[match.group(2) or "s"]


def _log_formatter() -> logging.Formatter:
    """MSR's line format (MSR_LOG_FORMAT: json, text, or unset/auto: text when stderr is a
    terminal); JSON for anything else."""
    return FORMATTERS.get(resolve_format(os.environ.get("MSR_LOG_FORMAT")), JsonFormatter)()


def _configure_logging() -> None:
    """The node's lines (msr.cache, msr.cache.access) on stderr, in the node's format."""
    node_log = logging.getLogger("msr.cache")
    if not node_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_log_formatter())
        node_log.addHandler(handler)
        node_log.setLevel(os.environ.get("MSR_LOG_LEVEL", "INFO"))
        node_log.propagate = False


class GunicornLogger(glogging.Logger):
    """gunicorn's own lines (start, workers) in the node's format (`msr cache` passes
    --logger-class). Not a logconfig_dict: that would also switch on gunicorn's access
    log, which prints query strings, where grants travel."""

    def setup(self, cfg):
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(_log_formatter())


class Config:
    def __init__(self, env=os.environ):
        self.name = env["MSR_CACHE_NAME"]
        self.msr_url = env["MSR_CACHE_MSR_URL"].rstrip("/")
        self.upstream = (env.get("MSR_CACHE_UPSTREAM") or self.msr_url).rstrip("/")
        self.data_dir = Path(env.get("MSR_CACHE_DATA_DIR", "./cache-data")).resolve()
        self.max_size = parse_size(env.get("MSR_CACHE_MAX_SIZE", "50G"))
        self.ttl = parse_duration(env.get("MSR_CACHE_TTL", "24h"))
        self.evict_interval = int(env.get("MSR_CACHE_EVICT_INTERVAL", "30"))
        # The regional endpoint (caches/endpoint.py).
        self.token_relay = env.get("MSR_CACHE_TOKEN_RELAY", "1").lower() in ("1", "true", "yes", "on")
        self.token_service = env.get("MSR_CACHE_TOKEN_SERVICE") or None  # else read from MSR's challenge
        self.public_url = (env.get("MSR_CACHE_PUBLIC_URL") or "").rstrip("/")
        self.membership_ttl = parse_duration(env.get("MSR_CACHE_MEMBERSHIP_TTL", "10m"))
        # A region's shared store (caches/region.py): several nodes of one name, one bucket.
        self.store = (env.get("MSR_CACHE_STORE") or "").strip()
        self.s3 = {"endpoint_url": env.get("MSR_CACHE_S3_ENDPOINT_URL") or None,
                   "public_endpoint_url": env.get("MSR_CACHE_S3_PUBLIC_ENDPOINT_URL") or None,
                   "region": env.get("MSR_CACHE_S3_REGION") or None,
                   "access_key": env.get("MSR_CACHE_S3_ACCESS_KEY_ID") or None,
                   "secret_key": env.get("MSR_CACHE_S3_SECRET_ACCESS_KEY") or None,
                   "addressing_style": env.get("MSR_CACHE_S3_ADDRESSING_STYLE") or "auto"}
        self.s3_redirect = env.get("MSR_CACHE_S3_REDIRECT", "0").lower() in ("1", "true", "yes", "on")
        self.s3_redirect_ttl = parse_duration(env.get("MSR_CACHE_S3_REDIRECT_TTL", "5m"))
        self.node_url = (env.get("MSR_CACHE_NODE_URL") or "").rstrip("/")
        self.node_id = env.get("MSR_CACHE_NODE_ID") or ""
        self.lease_ttl = parse_duration(env.get("MSR_CACHE_LEASE_TTL", "30s"))
        self.peer_networks = parse_networks(env.get("MSR_CACHE_PEER_NETWORKS") or DEFAULT_PEER_NETWORKS)


class UpstreamError(Exception):
    pass


class Keys:
    """MSR's public keys (JWKS), fetched on first use and again for an unknown key id."""

    def __init__(self, msr_url: str, saved: Path | None = None):
        self.url = f"{msr_url}/auth/jwks.json"
        self._keys: dict[str, object] = {}
        self._fetched_at = 0.0
        self._lock = threading.Lock()
        # The last keys fetched, kept on disk: a node restarted while MSR is away still
        # verifies the tokens MSR signed before.
        self._saved = saved
        self._load()

    def _load(self) -> None:
        if self._saved is not None:
            try:
                self._keys = {**self._keys, **self._parse(json.loads(self._saved.read_text()))}
            except (OSError, ValueError, KeyError, TypeError, jwt.PyJWTError):
                pass

    @staticmethod
    def _parse(document: dict) -> dict:
        return {k["kid"]: jwt.PyJWK(k).key for k in document["keys"]}

    def get(self, kid: str | None):
        key = self._keys.get(kid)
        if key is None:
            with self._lock:
                if kid not in self._keys:
                    self._load()  # another process of the node may have fetched it
                if kid not in self._keys and time.monotonic() - self._fetched_at > 5:
                    self._fetch()
            key = self._keys.get(kid)
        return key

    def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            response = requests.get(self.url, timeout=5)
            response.raise_for_status()
            document = response.json()
            self._keys = self._parse(document)
        except (requests.RequestException, ValueError, KeyError, TypeError, jwt.PyJWTError) as e:
            log.warning("cannot fetch MSR's keys from %s: %s", self.url, e)
            return
        if self._saved is not None:
            write_atomically(self._saved, json.dumps(document).encode())


class Metrics:
    """Counters of this process, written to <data>/metrics/<pid>.json so that /metrics
    can add up every process of the node."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.values = dict.fromkeys(COUNTERS, 0)
        self.values["requests"] = {}  # "<route> <status>" -> count
        self._lock = threading.Lock()
        self._dirty = True
        directory.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.values[name] += amount
            self._dirty = True

    def count_request(self, route: str, status: str) -> None:
        key = f"{route} {status}"
        with self._lock:
            self.values["requests"][key] = self.values["requests"].get(key, 0) + 1
            self._dirty = True

    def save(self) -> None:
        path = self.directory / f"{os.getpid()}.json"
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        with self._lock:
            if not self._dirty and path.exists():
                return
            tmp.write_text(json.dumps(self.values))
            self._dirty = False
            os.replace(tmp, path)  # inside the lock: an older snapshot never lands last

    def total(self) -> dict:
        self.save()
        totals = dict.fromkeys(COUNTERS, 0)
        requests_by_route = {}
        for path in self.directory.glob("*.json"):
            try:
                values = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for name in COUNTERS:
                totals[name] += int(values.get(name, 0))
            for key, count in (values.get("requests") or {}).items():
                requests_by_route[key] = requests_by_route.get(key, 0) + int(count)
        return {**totals, "requests": requests_by_route}


class CacheNode:
    def __init__(self, config: Config):
        self.config = config
        self.blobs = config.data_dir / "blobs"
        self.tmp = config.data_dir / "tmp"
        self.locks = config.data_dir / "locks"
        for directory in (self.blobs, self.tmp, self.locks):
            directory.mkdir(parents=True, exist_ok=True)
        _configure_logging()
        self.region = _region_store(config) if config.store else None
        self._heartbeat_lock = None
        self.keys = Keys(config.msr_url, config.data_dir / "jwks.json")
        self.metrics = Metrics(config.data_dir / "metrics")
        self.session = kept_alive_session()  # fills: GETs, sent again once on a connection MSR just closed
        self._fills: dict[str, _Fill] = {}
        self._fills_lock = threading.Lock()
        self.stopped = threading.Event()  # set: the background threads end (tests' in-process nodes)
        self.endpoint = RegionalEndpoint(self)
        threading.Thread(target=self._housekeeping, name="cache-housekeeping", daemon=True).start()

    def stop(self) -> None:
        """End the background threads (housekeeping, keeping MSR's connection warm)."""
        self.stopped.set()

    # -- WSGI ---------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        blob = BLOB_PATH_RE.match(path)
        manifest = None if blob else MANIFEST_PATH_RE.match(path)
        if blob:
            route = BLOB_ROUTE
        elif manifest:
            route = MANIFEST_ROUTE
        elif path in OTHER_ROUTES or path in ("/v2/", "/auth/token"):
            route = path
        else:
            route = "/v2/* (to MSR)" if path.startswith("/v2/") else "unmatched"
        found = blob or manifest
        query = parse_qs(environ.get("QUERY_STRING", ""))
        # The id in every line logged while serving this request (streaming a miss
        # included: gthread serves a request on one thread to the end).
        request_id = requestids.from_client((query.get("rid") or [""])[0] or environ.get("HTTP_X_REQUEST_ID"))
        requestids.begin(request_id)
        environ["msr.request_id"] = request_id

        def respond(status, headers, exc_info=None):
            headers.append((requestids.HEADER, request_id))
            self.metrics.count_request(route, status[:3])
            if route.startswith("/v2/") or route == "/auth/token":
                x_cache = next((value for name, value in headers if name == "X-Cache"), "")
                fields = {
                    "method": method, "route": route, "status": int(status[:3]),
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "user": environ.get("msr.user", ""), "repository": found.group("name") if found else "",
                    "digest": blob.group("digest") if blob else manifest.group("reference") if manifest else "",
                    "cache": self.config.name, "x_cache": x_cache}
                # Empty fields (no user, no X-Cache on a refusal) are left out of the line.
                access_log.info("%s %s %s", method, route, status[:3],
                                extra={k: v for k, v in fields.items() if v not in ("", None)})
            return start_response(status, headers, exc_info)

        body = self._route(environ, respond, path, method, blob, manifest, query)
        if method == "HEAD" and isinstance(body, list):
            # A HEAD answer has no body (RFC 9110 9.3.2), but the refusals (_error here and
            # in caches/endpoint.py) are built without the method: containerd resolves a tag
            # with HEAD, and its first HEAD gets the 401 challenge. gunicorn drops such bytes
            # but writes a plain-text warning into the node's JSON log (a server that did not
            # drop them would send them on the kept-alive connection, ahead of the next
            # answer). Streamed answers (a passthrough) are already empty for HEAD.
            return []
        return body

    def _route(self, environ, start_response, path, method, match, manifest, query):
        if path == "/healthz":
            return self._json(start_response, {"status": "ok", "name": self.config.name,
                                               **({"node": self.region.node} if self.region else {})})
        if path == "/stats":
            totals = self.metrics.total()
            del totals["requests"]
            if self.region is not None:
                try:
                    document = region_stats(self.region, totals)
                except Exception as e:  # the store is away: this node's own figures, said so
                    log.warning("cannot read the region's store: %s", e)
                    document = {**totals, **self.region.describe(), "region": {"error": str(e)[:300]}}
                return self._json(start_response, {**document, "disk_used": document.get("region", {}).get(
                    "used", 0), "name": self.config.name})
            return self._json(start_response, {**totals, "disk_used": self.disk_used(), "name": self.config.name})
        if path == "/metrics":
            return self._prometheus(start_response)
        if path == "/purge" and method == "POST":
            return self._purge(environ, start_response)
        if path == "/auth/token" and self.config.token_relay:
            return self.endpoint.relay_token(environ, start_response)
        if path == "/v2/":
            return self.endpoint.base(environ, start_response)
        if manifest is not None:
            return self.endpoint.manifest(environ, start_response, manifest.group("name"), manifest.group("reference"))
        if match is not None and method in ("GET", "HEAD"):
            name, digest = match.group("name"), match.group("digest")
            if "grant" not in query:  # a client of the region, with its access token
                return self.endpoint.blob(environ, start_response, name, digest)
            refusal = self._check_grant(environ, name, digest, query)
            if refusal:
                self.metrics.add("refused")
                return _error(start_response, *refusal)
            if environ.get(FOLLOW_HEADER) and self.region is not None:
                return self.follow(environ, start_response, digest)
            return self._blob(environ, start_response, name, digest)
        if path.startswith("/v2/"):
            return self.endpoint.passthrough(environ, start_response)
        return _error(start_response, "404 Not Found", "UNSUPPORTED", "no such endpoint on a cache")

    def _json(self, start_response, value):
        body = json.dumps(value).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def _prometheus(self, start_response):
        totals = self.metrics.total()
        lines = []
        for name in COUNTERS:
            metric = f"msr_cache_{name}_total"
            lines += [f"# TYPE {metric} counter", f'{metric}{{cache="{self.config.name}"}} {totals[name]}']
        lines += ["# TYPE msr_cache_disk_used_bytes gauge",
                  f'msr_cache_disk_used_bytes{{cache="{self.config.name}"}} {self.disk_used()}',
                  *self._region_metrics(),
                  "# HELP msr_cache_requests_total Requests answered, by route and status",
                  "# TYPE msr_cache_requests_total counter"]
        for key, count in sorted(totals["requests"].items()):
            route, _, status = key.rpartition(" ")
            lines.append(f'msr_cache_requests_total{{cache="{self.config.name}",route="{route}",'
                         f'status="{status}"}} {count}')
        body = ("\n".join(lines) + "\n").encode()
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4"), ("Content-Length", str(len(body)))])
        return [body]

    def _region_metrics(self) -> list[str]:
        """A region's node: the region's budget and its nodes by health (every node says
        the same; the counters above are this node's own)."""
        if self.region is None:
            return []
        try:
            nodes = self.region.nodes()
        except Exception as e:
            log.warning("cannot read the region's store: %s", e)
            return []
        healthy = sum(1 for entry in nodes if entry["healthy"])
        label = f'cache="{self.config.name}"'
        return ["# HELP msr_cache_region_budget_bytes The region's size budget (--max-size)",
                "# TYPE msr_cache_region_budget_bytes gauge",
                f"msr_cache_region_budget_bytes{{{label}}} {self.region.max_size}",
                "# HELP msr_cache_region_nodes The region's nodes by the age of their heartbeat",
                "# TYPE msr_cache_region_nodes gauge",
                f'msr_cache_region_nodes{{{label},state="healthy"}} {healthy}',
                f'msr_cache_region_nodes{{{label},state="unhealthy"}} {len(nodes) - healthy}']

    # -- grants -------------------------------------------------------------------------

    def _check_grant(self, environ, name, digest, query):
        grant = (query.get("grant") or [""])[0]
        if not grant:
            return ("401 Unauthorized", "UNAUTHORIZED", "a grant from MSR is required")
        try:
            claims = grants.verify_grant(grant, self.keys.get, name, digest, audience=self.config.name)
        except grants.GrantRefused as e:
            if e.denied:
                return ("403 Forbidden", "DENIED", e.reason)
            return ("401 Unauthorized", "UNAUTHORIZED", f"invalid grant: {e.reason}")
        environ["msr.fill"] = ({"grant": grant}, {})  # the upstream is asked with the same grant
        environ["msr.user"] = claims.get(grants.SUBJECT) or ""
        return None

    # -- blobs --------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        return self.blobs / algorithm / encoded[:2] / encoded

    def _files(self, digest: str) -> tuple[Path, Path, Path]:
        """The digest's lock, the partial file a fill writes, and the file holding its length."""
        stem = digest.replace(":", "-")
        return self.locks / f"{stem}.lock", self.tmp / f"{stem}.partial", self.tmp / f"{stem}.length"

    def published_path(self, digest: str) -> Path:
        """Where a fill's partial file goes once verified: the blob's place on a node's own
        disk; in a region, a verified copy kept while it is written to the shared store
        and the requests of the fill finish (then removed: the store is the region's)."""
        if self.region is None:
            return self.blob_path(digest)
        return self.tmp / (digest.replace(":", "-") + ".verified")

    def has_blob(self, digest: str) -> bool:
        if self.region is None:
            return self.blob_path(digest).exists()
        return self.region.head(digest) is not None

    def _try_lock(self, digest: str) -> int | None:
        """The digest's fill lock (flock: exclusive across threads and processes), or None
        if someone is filling it."""
        lock_fd = os.open(self._files(digest)[0], os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(lock_fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            return None
        return lock_fd

    def _blob(self, environ, start_response, name, digest):
        """A hit from disk; a miss filled once, however many ask at once: the request that
        takes the digest's lock starts the fill (a thread that writes the upstream's bytes
        into a partial file at the upstream's pace), and every request for the digest,
        that one included, is served from the partial file as it grows. A slow reader
        holds back nobody. A fill that fails lets a waiting request try again with its
        own grant."""
        target = self.blob_path(digest)
        whole = bool(environ.get("HTTP_RANGE")) or environ["REQUEST_METHOD"] == "HEAD"
        for _ in range(3):
            if self.region is not None:
                if environ["REQUEST_METHOD"] == "GET" and not whole and not self.config.s3_redirect:
                    # the common hit, a whole GET streamed: one request to the store, not HEAD + GET
                    opened = self.region.bucket.get_blob(digest)
                    if opened is not None:
                        return self._serve_stored(environ, start_response, digest, {"size": opened[1]},
                                                  body=opened[0])
                else:
                    stored = self.region.head(digest)
                    if stored is not None:
                        return self._serve_stored(environ, start_response, digest, stored)
            elif target.exists() and not self._expired(target):
                return self._serve(environ, start_response, target, digest)
            lock_fd = self._try_lock(digest)
            if lock_fd is not None:
                if self.region is None and target.exists():  # published between the look and the lock
                    os.close(lock_fd)
                    continue
                return self._fill(environ, start_response, name, digest, lock_fd, whole)
            partial = self._follow(digest)
            if partial is None:
                continue  # the fill ended: published, or failed (then try ourselves)
            if whole:
                partial[0].close()
                self._wait_published(digest)
                continue
            self.metrics.add("hits")
            return self._stream_partial(environ, start_response, digest, *partial, "HIT")
        return _error(start_response, "502 Bad Gateway", "UNAVAILABLE", "the upstream fetch failed")

    def _expired(self, path: Path) -> bool:
        """Past the TTL since its last use: removed, and then a miss like any other (the
        TTL holds at every request, not only at the next sweep)."""
        try:
            expired = time.time() - path.stat().st_mtime > self.config.ttl
        except FileNotFoundError:
            return False
        if expired:
            path.unlink(missing_ok=True)
        return expired

    def _follow(self, digest: str):
        """Another request is filling `digest`: (its partial file, opened, and the length)
        once it exists; None if the fill ends first."""
        lock_path, partial_path, length_path = self._files(digest)
        deadline = time.monotonic() + 70  # the filler's connect and first-byte timeouts
        while time.monotonic() < deadline:
            try:
                length = int(length_path.read_text())
                return open(partial_path, "rb"), length
            except (FileNotFoundError, ValueError):
                pass
            if self.published_path(digest).exists():
                if self.region is None:
                    return None
                try:  # verified, on its way to the region's store: served from here meanwhile
                    reader = open(self.published_path(digest), "rb")
                except FileNotFoundError:
                    return None
                return reader, os.fstat(reader.fileno()).st_size
            if self._lock_free(lock_path):
                return None
            time.sleep(0.01)
        return None

    def _lock_free(self, lock_path: Path) -> bool:
        """Nobody holds the fill lock (a filler that died released it with its process)."""
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        finally:
            os.close(fd)  # closing releases it again
        return True

    def _wait_published(self, digest: str) -> None:
        lock_path = self._files(digest)[0]
        while not self.published_path(digest).exists() and not self._lock_free(lock_path):
            time.sleep(0.02)

    def _serve(self, environ, start_response, path: Path, digest: str):
        try:
            blob = open(path, "rb")
        except FileNotFoundError:  # evicted a moment ago
            return _error(start_response, "503 Service Unavailable", "UNAVAILABLE", "retry")
        size = os.fstat(blob.fileno()).st_size
        os.utime(path)  # last access, for LRU eviction
        try:
            status, headers, start, end = _hit_answer(environ, digest, size)
        except RangeNotSatisfiable:
            blob.close()
            return _range_refused(start_response, size)
        length = end - start + 1
        headers.append(("Content-Length", str(length)))
        start_response(status, headers)
        self.metrics.add("hits")
        if environ["REQUEST_METHOD"] == "HEAD":
            blob.close()
            self.metrics.save()
            return []
        self.metrics.add("bytes_from_disk", length)
        self.metrics.save()  # before sending: /stats read right after the response is exact
        blob.seek(start)
        wrapper = environ.get("wsgi.file_wrapper")
        limited = LimitedFile(blob, length)
        return wrapper(limited, CHUNK) if wrapper else iter(lambda: limited.read(CHUNK), b"")

    def _fill(self, environ, start_response, name, digest, lock_fd, whole):
        """Start the fill of a missing blob (a thread, holding the digest's lock until the
        end) and answer this request from it."""
        fill = _Fill(digest)
        with self._fills_lock:
            self._fills[digest] = fill
        thread = threading.Thread(target=self._run_fill, name=f"fill-{digest[7:19]}",
                                  args=(fill, name, environ["msr.fill"], environ["msr.request_id"], lock_fd))
        thread.start()
        fill.answered.wait()
        if fill.stored:  # another node of the region stored it meanwhile
            thread.join()
            stored = self.region.head(digest)
            if stored is None:
                return _error(start_response, "503 Service Unavailable", "UNAVAILABLE", "retry")
            return self._serve_stored(environ, start_response, digest, stored)
        if fill.refusal is not None:
            status, body = fill.refusal
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        self.metrics.add("misses")
        if whole or fill.length < 0:
            fill.reader.close()
            thread.join()
            if fill.failed:
                return _error(start_response, "502 Bad Gateway", "UNAVAILABLE", fill.failed)
            return self._serve(environ, start_response, self.published_path(digest), digest)
        return self._stream_partial(environ, start_response, digest, fill.reader, fill.length, "MISS")

    def _run_fill(self, fill, name, credentials, request_id, lock_fd):
        """Fetch a blob from the upstream into the partial file, verify it and publish it;
        remove the partial file if anything is wrong (cut, short, corrupt). In a region,
        the blob's lease decides: its holder fetches from the upstream and writes the
        verified blob to the region's store; the other nodes stream it from the holder."""
        requestids.begin(request_id)
        lock_path, partial_path, length_path = self._files(fill.digest)
        upstream = lease = None
        try:
            try:
                upstream, lease = self._source(fill, name, credentials, request_id)
            except requests.RequestException as e:
                self.metrics.add("upstream_failures")
                fill.refuse("502 Bad Gateway", error_body("UNAVAILABLE", f"upstream unreachable: {e}"))
                return
            if upstream is None:
                if not fill.answered.is_set():
                    fill.stored = True
                return
            if upstream.status_code != 200:
                self.metrics.add("upstream_failures")
                status = {401: "401 Unauthorized", 403: "403 Forbidden", 404: "404 Not Found"}.get(
                    upstream.status_code, "502 Bad Gateway")
                fill.refuse(status, upstream.content[:10000])
                return
            from_peer = self.region is not None and lease is None
            self.metrics.add("peer_fetches" if from_peer else "upstream_fetches")
            fill.length = int(upstream.headers.get("Content-Length", "-1"))
            if not from_peer:
                if lease is not None:
                    lease.say_length(fill.length)
                self.make_room(max(fill.length, 0))
            partial_path.unlink(missing_ok=True)  # a dead filler's; its readers see it gone
            length_path.write_text(str(fill.length))
            out_fd = os.open(partial_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            fill.reader = open(partial_path, "rb")
            fill.answered.set()
            try:
                self._download(upstream, fill, out_fd, "bytes_from_peers" if from_peer else "bytes_from_upstream")
                target = self.published_path(fill.digest)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(partial_path, target)
            except UpstreamError as e:
                self.metrics.add("upstream_failures")
                log.warning("not publishing %s: %s", fill.digest, e)
                fill.failed = str(e)
                # The length first: readers end when the partial file goes, and nothing of
                # the fill may be left by then.
                length_path.unlink(missing_ok=True)
                partial_path.unlink(missing_ok=True)
            finally:
                os.close(out_fd)
                length_path.unlink(missing_ok=True)
            if lease is not None and not fill.failed:
                try:  # the requests of this fill finish meanwhile, from the verified copy
                    if self.region.purges(fill.digest)() != lease.purges:
                        log.info("not writing %s to the region's store: purged while it was filled", fill.digest)
                    else:
                        self.region.publish(fill.digest, target)
                except Exception as e:  # the next miss fetches it again
                    log.warning("cannot write %s to the region's store: %s", fill.digest, e)
        except Exception as e:  # a bug or a full disk: nobody may wait forever
            log.exception("fill of %s failed", fill.digest)
            fill.failed = f"fill failed: {type(e).__name__}"
            length_path.unlink(missing_ok=True)
            partial_path.unlink(missing_ok=True)
            fill.refuse("502 Bad Gateway", error_body("UNAVAILABLE", fill.failed))
        finally:
            if upstream is not None:
                upstream.close()
            if lease is not None:
                lease.release()
            with self._fills_lock:
                self._fills.pop(fill.digest, None)
            os.close(lock_fd)
            fill.finish()
            self.metrics.save()

    def _source(self, fill, name, credentials, request_id):
        """Where a fill's bytes come from: (the upstream's answer, None) on a node of its
        own; in a region, (the upstream's answer, the blob's lease) when this node won the
        lease, (the holder's stream, None) while another node fills it, or (None, None)
        when the blob is in the region's store by now. A holder that does not answer (it
        died: its lease runs out) is waited for, then its lease is taken over."""
        params, headers = credentials  # the client's grant, or its access token
        headers = {"X-Request-ID": request_id, **headers}
        url = f"{self.config.upstream}/v2/{name}/blobs/{fill.digest}"

        def from_upstream():
            return self.session.get(url, params=params, stream=True, timeout=(5, 60), headers=headers,
                                    allow_redirects=True)

        if self.region is None:
            return from_upstream(), None
        deadline = time.monotonic() + 2 * self.region.lease_ttl + 10
        while True:
            if self.region.head(fill.digest) is not None:
                return None, None
            lease, holder = self.region.acquire(lease_name(fill.digest), stale_if_mine=True)
            if lease is not None:
                purges = self.region.purges(fill.digest)  # read while the store is looked at again
                if self.region.head(fill.digest) is not None:
                    # Stored between the look above and the lease: its holder wrote it
                    # and let go of the lease meanwhile. Nothing to fetch.
                    lease.release()
                    return None, None
                try:
                    lease.purges = purges()  # before the fetch; compared before the blob is written
                    return from_upstream(), lease
                except BaseException:
                    lease.release()
                    raise
            peer = str((holder or {}).get("url") or "")
            if peer and not peer_allowed(peer, self.config.peer_networks):
                log.warning("not streaming %s from %r: not a region node's address (MSR_CACHE_PEER_NETWORKS)",
                            fill.digest, peer[:200])
            elif peer:
                try:
                    answer = self.session.get(f"{peer}/v2/{name}/blobs/{fill.digest}", params=params, stream=True,
                                              timeout=(2, 60), allow_redirects=False,
                                              headers={**headers, "X-MSR-Region-Follow": "1"})
                except requests.RequestException as e:
                    log.info("the node filling %s (%s) does not answer: %s", fill.digest, peer, e)
                else:
                    if answer.status_code in (200, 401, 403):  # 401/403: the client's credentials
                        return answer, None
                    answer.close()
            if time.monotonic() > deadline:
                raise requests.ConnectionError(f"the region's node filling {fill.digest} does not answer")
            time.sleep(0.25)

    def follow(self, environ, start_response, digest):
        """Another node of the region streams a fill in progress here (it lost the race for
        the blob's lease to this node): the partial file as it grows, or the stored blob;
        404 if this node has neither (then the asking node looks at the lease again)."""
        stored = self.region.head(digest)
        if stored is not None:
            return self._serve_stored(environ, start_response, digest, stored, redirect=False)
        if not self._lock_free(self._files(digest)[0]):
            partial = self._follow(digest)
            if partial is not None:
                return self._stream_partial(environ, start_response, digest, *partial, "HIT")
        return _error(start_response, "404 Not Found", "BLOB_UNKNOWN", "this node is not filling the blob")

    def _serve_stored(self, environ, start_response, digest, stored, redirect=None, body=None):
        """A hit from the region's store: a redirect to a presigned GET (--s3-redirect), or
        the object streamed through the node, with Range. `body`: the whole object, already
        opened (a plain GET)."""
        size = stored["size"]
        self.region.touch(digest)
        self.metrics.add("hits")
        if (self.config.s3_redirect if redirect is None else redirect) and environ["REQUEST_METHOD"] == "GET":
            location = self.region.bucket.presigned_blob_url(digest, self.config.s3_redirect_ttl)
            self.metrics.save()
            start_response("307 Temporary Redirect", [("Location", location), ("Content-Length", "0"),
                                                      ("Docker-Content-Digest", digest), ("X-Cache", "HIT")])
            return []
        try:
            status, headers, start, end = _hit_answer(environ, digest, size)
        except RangeNotSatisfiable:
            return _range_refused(start_response, size)
        length = end - start + 1
        if environ["REQUEST_METHOD"] == "HEAD" or length <= 0:
            if body is not None:
                body.close()
            start_response(status, [*headers, ("Content-Length", str(max(length, 0)))])
            self.metrics.save()
            return []
        if body is None:
            try:
                body = self.region.open(digest, start, length)
            except FileNotFoundError:  # evicted a moment ago
                return _error(start_response, "503 Service Unavailable", "UNAVAILABLE", "retry")
        start_response(status, [*headers, ("Content-Length", str(length))])
        self.metrics.add("bytes_from_disk", length)
        self.metrics.save()
        chunks = _stored_chunks(body, length)
        return _ClosingStream(chunks, body.close, chunks)

    def _download(self, upstream, fill, out_fd: int, counter: str = "bytes_from_upstream") -> None:
        """Write the upstream body to the partial file, hashing it; raise UpstreamError
        unless it is complete and matches the digest."""
        algorithm = fill.digest.partition(":")[0]
        hasher = hashlib.new(algorithm)
        written = 0
        try:
            for chunk in upstream.iter_content(CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out_fd, view):]
                hasher.update(chunk)
                written += len(chunk)
                self.metrics.add(counter, len(chunk))
                fill.grew()
        except (requests.RequestException, OSError) as e:
            raise UpstreamError(f"upstream cut after {written} bytes: {e}") from None
        if fill.length >= 0 and written != fill.length:
            raise UpstreamError(f"upstream sent {written} of {fill.length} bytes")
        if f"{algorithm}:{hasher.hexdigest()}" != fill.digest:
            raise UpstreamError("upstream content does not match the digest")
        os.fsync(out_fd)

    def _stream_partial(self, environ, start_response, digest, reader, length, x_cache):
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(length)),
                                  ("Docker-Content-Digest", digest), ("X-Cache", x_cache)])
        stream = self._tail(reader, length, digest, count_disk=x_cache == "HIT",
                            connection=environ.get("gunicorn.socket"))

        def finished():
            reader.close()
            self.metrics.save()

        return _ClosingStream(stream, finished, stream)

    def _tail(self, reader, length: int, digest: str, count_disk: bool, connection=None):
        """The bytes of a partial file as they arrive; the last byte only once the file is
        published (complete and verified: a client never gets a whole body of wrong
        bytes). If the fill fails, the body ends short and the connection is shut, so the
        client knows at once rather than when keep-alive gives up on it."""
        try:
            yield from self._tail_bytes(reader, length, digest, count_disk)
        except UpstreamError:
            if connection is not None:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _tail_bytes(self, reader, length: int, digest: str, count_disk: bool):
        fd = reader.fileno()
        target = self.published_path(digest)
        lock_path = self._files(digest)[0]
        sent, idle_since, published = 0, time.monotonic(), False
        while sent < length:
            status = os.fstat(fd)
            # Once seen published, always: a region's verified copy is removed a while after.
            published = published or (status.st_nlink > 0 and _same_file(target, status))
            if status.st_nlink == 0 and not published:
                log.warning("serving %s: the fill failed after %d bytes", digest, sent)
                raise UpstreamError("the fill failed")  # the partial file was removed
            limit = length if published else length - 1
            if sent < min(status.st_size, limit):
                data = os.pread(fd, min(CHUNK, min(status.st_size, limit) - sent), sent)
                sent += len(data)
                idle_since = time.monotonic()
                if count_disk:  # the request that fetched counts as bytes from upstream
                    self.metrics.add("bytes_from_disk", len(data))
                yield data
                continue
            if published:
                continue
            if time.monotonic() - idle_since > 1 and self._lock_free(lock_path) and not _same_file(target, status):
                log.warning("serving %s: the filler went away after %d bytes", digest, sent)
                raise UpstreamError("the filler went away")
            fill = self._fills.get(digest)
            if fill is not None:
                fill.wait_growth(0.05)
            else:
                time.sleep(0.01)  # filled by another process of the node

    # -- purge and eviction -------------------------------------------------------------

    def _purge(self, environ, start_response):
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        try:
            claims = (grants.decode(token.strip(), self.keys.get, grants.PURGE_TYPE, audience=self.config.name)
                      if scheme.lower() == "bearer" else None)
        except jwt.PyJWTError as e:
            claims, reason = None, str(e)
        else:
            reason = "a purge token from MSR is required"
        if claims is None:
            return _error(start_response, "401 Unauthorized", "UNAUTHORIZED", reason)
        digest = claims.get(grants.DIGEST)
        if self.region is not None:  # the region's store: gone for every node of the region
            for path in ([self.published_path(digest)] if digest else list(self.tmp.glob("*.verified"))):
                path.unlink(missing_ok=True)
            try:
                removed = self.region.purge(digest)
            except Exception as e:
                log.warning("purge of the region's store failed: %s", e)
                return _error(start_response, "503 Service Unavailable", "UNAVAILABLE",
                              f"the region's store did not answer: {type(e).__name__}")
            return self._json(start_response, {"removed": removed})
        removed = 0
        for path in ([self.blob_path(digest)] if digest else list(self.blobs.glob("*/*/*"))):
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return self._json(start_response, {"removed": removed})

    def disk_used(self) -> int:
        if self.region is not None:
            return self.region.used()
        return sum(p.stat().st_size for p in self.blobs.glob("*/*/*") if p.is_file())

    def evict(self, incoming: int = 0) -> int:
        """Remove blobs older than the TTL (by last access), then the least recently used
        until the store, the fills in progress and `incoming` bytes fit the size budget.
        Returns the bytes freed. The caller holds the eviction lock."""
        now, freed, entries = time.time(), 0, []
        for path in self.blobs.glob("*/*/*"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if now - stat.st_mtime > self.config.ttl:
                path.unlink(missing_ok=True)
                freed += stat.st_size
            else:
                entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries) + incoming + self._filling()
        for _, size, path in sorted(entries):
            if total <= self.config.max_size:
                break
            path.unlink(missing_ok=True)
            total -= size
            freed += size
        return freed

    def _filling(self) -> int:
        """Bytes of the fills in progress (their partial files, as far as written)."""
        total = 0
        for path in self.tmp.glob("*.partial"):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def make_room(self, incoming: int) -> None:
        """Evict before a fill of `incoming` bytes would take the store past its budget:
        the budget holds at every moment, not only at the next sweep."""
        if self.region is not None:
            self.region.make_room(incoming)
            return
        lock = os.open(self.locks / "evict.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.evict(incoming)
        finally:
            os.close(lock)

    def _region_housekeeping(self, last_beat: float) -> float:
        """A region's node: its heartbeat (one process of the node sends it: the one that
        holds the heartbeat lock), its processes' last-use times, and the verified copies
        of finished fills removed (the store has them)."""
        if time.monotonic() - last_beat < HEARTBEAT_SECONDS:
            return last_beat
        if self._heartbeat_lock is None:
            fd = os.open(self.locks / "heartbeat.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._heartbeat_lock = fd  # held for the process's life
            except OSError:
                os.close(fd)
        try:
            if self._heartbeat_lock is not None:
                totals = self.metrics.total()
                del totals["requests"]
                self.region.heartbeat(totals)
            self.region.save_use()
        except Exception as e:
            log.warning("cannot write to the region's store: %s", e)
        for path in self.tmp.glob("*.verified"):
            # A reader of the fill marks it published at its next chunk (and keeps it so):
            # a minute covers any reader that still moves.
            if _older_than(path, VERIFIED_COPY_SECONDS):
                path.unlink(missing_ok=True)
        return time.monotonic()

    def _evict_region(self) -> None:
        try:
            self.region.evict()
        except Exception as e:
            log.warning("eviction of the region's store failed: %s", e)

    def _housekeeping(self) -> None:
        last_eviction = last_report = time.monotonic()
        last_beat = 0.0
        while not self.stopped.wait(0.5):
            try:
                self.metrics.save()
                if time.monotonic() - last_report >= 2:
                    last_report = time.monotonic()
                    self.endpoint.reports.send()
                if self.region is not None:
                    last_beat = self._region_housekeeping(last_beat)
                if time.monotonic() - last_eviction >= self.config.evict_interval:
                    last_eviction = time.monotonic()
                    if self.region is not None:
                        self._evict_region()
                        self.endpoint.forget_stale()
                        continue
                    lock = os.open(self.locks / "evict.lock", os.O_CREAT | os.O_RDWR, 0o600)
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        self.evict()
                        self.endpoint.forget_stale()
                    except OSError:
                        pass  # another process of the node is evicting
                    finally:
                        os.close(lock)
            except Exception:
                log.exception("cache housekeeping failed")


def _hit_answer(environ, digest: str, size: int) -> tuple[str, list, int, int]:
    """The status, headers and byte span (first, last) of a hit of `size` bytes, as the
    request's Range asks; RangeNotSatisfiable for a range outside it."""
    start, end, status = 0, size - 1, "200 OK"
    headers = [("Content-Type", "application/octet-stream"), ("Docker-Content-Digest", digest),
               ("Accept-Ranges", "bytes"), ("X-Cache", "HIT")]
    if environ.get("HTTP_RANGE"):
        start, end = parse_range(environ["HTTP_RANGE"], size)
        status = "206 Partial Content"
        headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
    return status, headers, start, end


def _range_refused(start_response, size: int):
    return _error(start_response, "416 Range Not Satisfiable", "RANGE_INVALID", "requested range not satisfiable",
                  [("Content-Range", f"bytes */{size}")])


def _stored_chunks(body, length: int):
    """A stored object's bytes as the store sends them; a store that stops short ends
    the response short (the client sees a cut, never a complete wrong body)."""
    sent = 0
    while sent < length:
        try:
            data = body.read(min(CHUNK, length - sent))
        except Exception as e:
            log.warning("reading from the region's store failed after %d bytes: %s", sent, e)
            return
        if not data:
            log.warning("the region's store sent %d of %d bytes", sent, length)
            return
        sent += len(data)
        yield data


def _region_store(config: Config):
    """The region's shared store of `msr cache --store s3://bucket/prefix`."""
    bucket, prefix = blobstore.parse_url(config.store)
    node_url = config.node_url or _default_node_url()
    return RegionStore(blobstore.S3Bucket(bucket, prefix, **config.s3), config.name,
                       config.node_id or node_id(node_url), node_url, config.lease_ttl, config.ttl, config.max_size)


def _default_node_url() -> str:
    """http://<bind>: gunicorn's first --bind (in GUNICORN_CMD_ARGS or the command line);
    a wildcard host is replaced by this host's name."""
    bind = os.environ.get("MSR_CACHE_BIND") or "127.0.0.1:5100"
    host, _, port = bind.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = socket.gethostname()
    return f"http://{host}:{port}"


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def _same_file(path: Path, status) -> bool:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return False
    return (found.st_dev, found.st_ino) == (status.st_dev, status.st_ino)


class _Fill:
    """A fill in progress in this process: its outcome for the request that started it,
    and a condition its readers here wait on for more bytes."""

    def __init__(self, digest: str):
        self.digest = digest
        self.answered = threading.Event()  # the upstream answered (or the fill failed)
        self.refusal = None  # (status, body) when the upstream did not send the blob
        self.length = -1
        self.reader = None
        self.failed = ""
        self.stored = False  # in the region's store by now: nothing to fetch
        self._growth = threading.Condition()

    def refuse(self, status: str, body: bytes) -> None:
        if not self.answered.is_set():
            self.refusal = (status, body)
            self.answered.set()

    def grew(self) -> None:
        with self._growth:
            self._growth.notify_all()

    def wait_growth(self, timeout: float) -> None:
        with self._growth:
            self._growth.wait(timeout)

    def finish(self) -> None:
        self.answered.set()
        self.grew()


class _ClosingStream:
    """A WSGI body that runs `on_close` (release the digest's lock) when the server is
    done with it, whether the stream ended, failed or the client went away."""

    def __init__(self, iterator, on_close, generator):
        self._iterator, self._on_close, self._generator = iterator, on_close, generator

    def __iter__(self):
        return self._iterator

    def close(self):
        try:
            self._generator.close()
        finally:
            self._on_close()


_node = None
_node_lock = threading.Lock()


def application(environ, start_response):
    global _node
    if _node is None:
        with _node_lock:
            if _node is None:
                _node = CacheNode(Config())
    return _node(environ, start_response)
