"""The cache node as its region's registry endpoint: clients (containerd and podman
mirrors, or plain clients by the regional host name) pull from the node, which verifies
MSR's access tokens itself; permissions stay decided at MSR.

What the node answers, and what it asks MSR:
- `GET /v2/`: 200 to a valid access token, else the challenge MSR gives (tokens are issued
  by MSR's token service, relayed by the node when MSR_CACHE_TOKEN_RELAY is on: the
  challenge then names the node's `/auth/token`, which passes every request on to MSR
  over kept-alive connections).
- A manifest by tag: resolved at MSR on every pull, with the client's token (one WAN
  round trip), so tag moves, deletes and permission changes are seen at once. The node
  keeps the manifest by digest and learns that it, its config and layers (an index: its
  manifests) belong to the repository.
- A manifest or blob by digest: served from the region only for a token that may pull
  the repository and only once the node knows that the digest belongs to that
  repository (learned from a manifest MSR served for it under a valid token, or asked
  from MSR once, with the client's token); never by digest alone. What the node learnt
  is trusted for MSR_CACHE_MEMBERSHIP_TTL seconds (600), so a deletion at MSR is seen
  within that time even by clients that pull by digest only.
- Blob misses fill through the node's single-flight, streaming, verified fill
  (caches/node.py), from the upstream with the client's token.
- Everything else (pushes, deletes, tags lists, referrers, the catalog) passes through to
  MSR as it is, streamed both ways, so one regional address works for every command.

Django-free, like the rest of the node (tests/unit/test_dependencies.py).
"""

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from protocol import access
from protocol.errors import error_body

log = logging.getLogger("msr.cache")

DIGEST = r"(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})"
MANIFEST_PATH_RE = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$")
DIGEST_RE = re.compile(rf"^{DIGEST}$")
MANIFEST_ROUTE = "/v2/<name>/manifests/<reference>"
# A manifest is a small document (MSR refuses larger than this at push).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
CHUNK = 1024 * 1024
# Headers of one connection, not of the message (RFC 9110 7.6.1): never relayed.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "transfer-encoding", "upgrade", "host"})
UNREACHABLE = ("MSR is unreachable: a tag is resolved at MSR on every pull (pull by digest still works "
               "for images this cache has served)")


def kept_alive_session() -> requests.Session:
    """A session whose connections to MSR stay open between requests, as many as the
    node's threads use at once. A kept-alive connection that MSR closes as the node reuses
    it (its idle timeout) fails the request at once, before any answer: a GET or HEAD is
    then sent again once, on a new connection, instead of failing the client's pull."""
    session = requests.Session()
    retry = Retry(total=2, connect=1, read=1, status=0, other=0, allowed_methods=frozenset({"GET", "HEAD"}),
                  raise_on_status=False, respect_retry_after_header=False)
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=64, max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class Unreachable(Exception):
    pass


API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")


def error_response(start_response, status: str, code: str, message: str, headers=()):
    """An OCI error body (protocol/errors.py) as the node's WSGI answer."""
    body = error_body(code, message)
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            *headers])
    return [body]


def _error(start_response, status: str, code: str, message: str, headers=()):
    return error_response(start_response, status, code, message, [API_VERSION, *headers])


def write_atomically(path: Path, data: bytes) -> None:
    """`data` in `path`, whole or not at all: the node's other processes, and the node after
    a crash, read either the old content or the new."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _challenge_params(header: str) -> dict:
    """`Bearer realm="…",service="…"` -> {"realm": …, "service": …}."""
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "bearer":
        return {}
    return dict(re.findall(r'(\w+)="([^"]*)"', rest))


class _Body:
    """A request body of known length, read from the WSGI stream as requests sends it
    (requests gives a body with a length a Content-Length, not chunked encoding)."""

    def __init__(self, stream, length: int):
        self._stream, self._left = stream, length

    def __len__(self):
        return self._left

    def read(self, size=-1):
        if self._left <= 0:
            return b""
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._stream.read(size)
        self._left -= len(data)
        if not data:
            self._left = 0
        return data


def _forwarded_for(environ) -> str:
    """X-Forwarded-For with the client's address appended (MSR believes it only from the
    proxies of its MSR_FORWARDED_ALLOW_IPS)."""
    forwarded, client = environ.get("HTTP_X_FORWARDED_FOR"), environ.get("REMOTE_ADDR", "")
    return f"{forwarded}, {client}" if forwarded else client


def _chunks(stream):
    while data := stream.read(CHUNK):
        yield data


def referenced_digests(body: bytes) -> set[str]:
    """The digests a manifest references: its config and layers (or an artifact's blobs),
    an index's manifests. MSR stored it only once every one of them was in the
    repository (services.put_manifest), which is what lets the node learn them."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return set()
    if not isinstance(document, dict):
        return set()
    found = set()
    entries = []
    for key in ("layers", "manifests", "blobs"):
        if isinstance(document.get(key), list):
            entries += document[key]
    if isinstance(document.get("config"), dict):
        entries.append(document["config"])
    for entry in entries:
        digest = entry.get("digest") if isinstance(entry, dict) else None
        if isinstance(digest, str) and DIGEST_RE.match(digest):
            found.add(digest)
    return found


class PullReports:
    """Pulls answered in the region without MSR (manifests by digest), for MSR's audit
    trail: each is appended to this process's spool file as it is served, and the
    housekeeping thread sends them in batches (`send`). A batch file is removed only once
    MSR has recorded it, so a report survives MSR's absence and the node's restarts; MSR
    refuses reports older than a day, so those are dropped. Each carries the client's
    access token, MSR's proof of who pulled and that the pull was allowed (the node has
    no credential of its own): the files are readable by the node's user only."""

    BATCH = 1000
    MAX_AGE = 24 * 3600

    def __init__(self, directory: Path, msr_url: str, cache_name: str, session):
        self.directory, self.msr_url, self.cache_name, self.session = directory, msr_url, cache_name, session
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def add(self, token: str, repository: str, digest: str, client: str) -> None:
        line = json.dumps({"token": token, "repository": repository, "digest": digest,
                           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "client": client or None})
        with self._lock:
            fd = os.open(self.directory / f"spool-{os.getpid()}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode() + b"\n")
            finally:
                os.close(fd)

    def send(self) -> None:
        """Close this process's spool into a batch, then send every batch of the node
        (one process at a time) until MSR is away or all are recorded."""
        with self._lock:
            try:
                os.replace(self.directory / f"spool-{os.getpid()}.jsonl",
                           self.directory / f"batch-{time.time_ns()}-{os.getpid()}.jsonl")
            except FileNotFoundError:
                pass
        lock = os.open(self.directory / "send.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock)
            return  # another process of the node is sending
        try:
            for batch in sorted(self.directory.glob("batch-*.jsonl")):
                if not self._send_file(batch):
                    return
        finally:
            os.close(lock)

    def _send_file(self, path: Path) -> bool:
        """Send one batch file, BATCH pulls at a time, rewriting it with what is left
        after each recorded part; False if MSR did not take it (try again later)."""
        if time.time() - path.stat().st_mtime > self.MAX_AGE:
            log.warning("dropping pull reports older than a day (%s): MSR refuses them", path.name)
            path.unlink(missing_ok=True)
            return True
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        while lines:
            part, rest = lines[:self.BATCH], lines[self.BATCH:]
            pulls = []
            for line in part:
                try:
                    pulls.append(json.loads(line))
                except ValueError:  # a line cut by a crash mid-write
                    log.warning("dropping an unreadable pull report line in %s", path.name)
            try:
                answer = self.session.post(f"{self.msr_url}/api/v0/content_caches/pulls", timeout=(5, 30),
                                           json={"cache": self.cache_name, "pulls": pulls}) if pulls else None
            except requests.RequestException as e:
                log.info("pull reports wait: MSR unreachable (%s)", type(e).__name__)
                return False
            if answer is not None and (answer.status_code >= 500 or answer.status_code == 404):
                # 404: this cache is not (yet) registered at MSR under its name
                log.info("pull reports wait: MSR answered %s", answer.status_code)
                return False
            if answer is not None and answer.status_code != 200:
                log.warning("MSR refused %d pull reports: %s %s", len(part), answer.status_code, answer.text[:200])
            lines = rest
            write_atomically(path, "".join(f"{line}\n" for line in lines).encode())
        path.unlink(missing_ok=True)
        return True


class RegionalEndpoint:
    def __init__(self, node):
        self.node = node
        self.config = node.config
        self.manifests = self.config.data_dir / "manifests"
        self.members = self.config.data_dir / "members"
        for directory in (self.manifests, self.members):
            directory.mkdir(parents=True, exist_ok=True)
        self.tokens = access.VerifiedTokens()
        # Kept-alive connections to MSR, as many as the node's threads may use at once:
        # a warm pull costs no new WAN connection.
        self.session = kept_alive_session()
        self.session.hooks["response"].append(self._used_msr)
        self._last_client = self._last_msr = 0.0  # time.monotonic() of the last request of each
        threading.Thread(target=self._keep_warm_forever, name="msr-keep-warm", daemon=True).start()
        self.reports = PullReports(self.config.data_dir / "reports", self.config.msr_url, self.config.name,
                                   self.session)
        # MSR's token service as last read, kept on disk: the node's other processes read
        # it there, and a node restarted while MSR is away still verifies MSR's tokens.
        self._saved_service = self.config.data_dir / "token-service.json"
        self._token_service: tuple[str, str] | None = None
        if self.config.token_service:
            self._token_service = (self.config.token_service, f"{self.config.msr_url}/auth/token")
        self._service_lock = threading.Lock()

    # -- a warm connection to MSR -------------------------------------------------------

    # MSR closes a kept-alive connection after a few idle seconds (gunicorn's keep-alive,
    # 5 s): a pull after a pause would open a new WAN connection for its token and its tag,
    # a round trip each (more with TLS). While its region pulls (a client request in the
    # last WARM_WHILE seconds), each process of the node keeps one connection open with a
    # cheap request (`GET /healthz`) once it has been idle WARM_IDLE seconds.
    WARM_WHILE, WARM_IDLE = 600.0, 3.0

    def _used_msr(self, response, *args, **kwargs):
        self._last_msr = time.monotonic()

    def _keep_warm_forever(self) -> None:
        while not self.node.stopped.wait(0.5):
            try:
                self.keep_warm()
            except Exception:
                log.exception("keeping a connection to MSR open failed")

    def keep_warm(self) -> None:
        now = time.monotonic()
        if now - self._last_client > self.WARM_WHILE or now - self._last_msr < self.WARM_IDLE:
            return
        try:
            self.session.get(f"{self.config.msr_url}/healthz", timeout=(5, 5)).close()
        except requests.RequestException as e:
            self._last_msr = now  # not again at once; the next pull says whether MSR is away
            log.debug("keeping a connection to MSR open: %s", e)

    # -- MSR's token service ------------------------------------------------------------

    def token_service(self) -> tuple[str, str]:
        """(service, realm) of MSR's token service, read once from MSR's own challenge."""
        if self._token_service is None:
            with self._service_lock:
                if self._token_service is None:
                    try:
                        saved = json.loads(self._saved_service.read_text())
                        self._token_service = (saved["service"], saved["realm"])
                        return self._token_service
                    except (OSError, ValueError, KeyError, TypeError):
                        pass
                    try:
                        answer = self.session.get(f"{self.config.msr_url}/v2/", timeout=(5, 10))
                    except requests.RequestException as e:
                        raise Unreachable(str(e)) from None
                    params = _challenge_params(answer.headers.get("WWW-Authenticate", ""))
                    if "realm" not in params or "service" not in params:
                        raise Unreachable(f"MSR's /v2/ answered {answer.status_code} without a Bearer challenge")
                    self._token_service = (params["service"], params["realm"])
                    write_atomically(self._saved_service,
                                     json.dumps({"service": params["service"], "realm": params["realm"]}).encode())
        return self._token_service

    def base(self, environ, start_response):
        """`GET /v2/`: the version check, and where clients learn the challenge."""
        claims, refusal = self.authenticate(environ, start_response, None)
        if claims is None:
            return refusal
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2"), API_VERSION])
        return [b"{}"]

    def realm(self, environ) -> str:
        """Where clients get tokens: this node's relay, or MSR's token service."""
        if self.config.token_relay:
            base = self.config.public_url or f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"
            return f"{base.rstrip('/')}/auth/token"
        return self.token_service()[1]

    def challenge(self, environ, scope: str | None = None, error: str | None = None) -> str:
        header = f'Bearer realm="{self.realm(environ)}",service="{self.token_service()[0]}"'
        if scope:
            header += f',scope="{scope}"'
        if error:
            header += f',error="{error}"'
        return header

    def authenticate(self, environ, start_response, name: str | None):
        """The claims of the request's access token if it may pull `name` (None: any valid
        token); else the refusal MSR would give, answered, as (None, response)."""
        claims, refusal = self._authenticate(environ, start_response, name)
        if claims is None:
            self.node.metrics.add("refused")
        return claims, refusal

    def _authenticate(self, environ, start_response, name: str | None):
        self._last_client = time.monotonic()
        scope = f"repository:{name}:pull" if name else None
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                return None, _error(start_response, "401 Unauthorized", "UNAUTHORIZED", "authentication required",
                                    [("WWW-Authenticate", self.challenge(environ, scope))])
            try:
                claims = self.tokens.verify(token.strip(), self.node.keys.get, self.token_service()[0])
            except access.InvalidToken as e:
                return None, _error(start_response, "401 Unauthorized", "UNAUTHORIZED", f"invalid token: {e}",
                                    [("WWW-Authenticate", self.challenge(environ, scope, "invalid_token"))])
        except Unreachable as e:
            return None, self._unreachable(start_response, e)
        if name and not access.may(claims, name, "pull"):
            return None, _error(
                start_response, "401 Unauthorized", "UNAUTHORIZED",
                f"insufficient scope: the token does not grant pull on {name}",
                [("WWW-Authenticate", self.challenge(environ, scope, "insufficient_scope"))])
        environ["msr.user"] = claims.get("sub") or ""
        environ["msr.token"] = token.strip()
        return claims, None

    def _unreachable(self, start_response, error):
        log.warning("MSR unreachable: %s", error)
        return _error(start_response, "503 Service Unavailable", "UNAVAILABLE", UNREACHABLE,
                      [("Retry-After", "5")])

    # -- what the node knows ------------------------------------------------------------

    def _member_path(self, name: str, digest: str) -> Path:
        repository = hashlib.sha256(name.encode()).hexdigest()
        return self.members / repository[:2] / repository / digest.replace(":", "-")

    def learn(self, name: str, digests) -> None:
        """`digests` belong to repository `name` (MSR said so, now)."""
        for digest in digests:
            path = self._member_path(name, digest)
            try:
                os.utime(path)
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()

    def knows(self, name: str, digest: str) -> bool:
        try:
            learnt = self._member_path(name, digest).stat().st_mtime
        except FileNotFoundError:
            return False
        return time.time() - learnt < self.config.membership_ttl

    def _manifest_path(self, digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        return self.manifests / algorithm / encoded[:2] / encoded

    def _keep_manifest(self, digest: str, media_type: str, body: bytes) -> None:
        path = self._manifest_path(digest)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps({"mediaType": media_type}).encode() + b"\n" + body)

    def _kept_manifest(self, digest: str) -> tuple[str, bytes] | None:
        path = self._manifest_path(digest)
        try:
            head, _, body = path.read_bytes().partition(b"\n")
            os.utime(path)  # last use, for forget_stale
            return json.loads(head)["mediaType"], body
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def forget_stale(self) -> None:
        """What the node learnt and no longer trusts (older than the membership TTL), and
        manifests unused for the cache's TTL, like blobs. Run with the periodic eviction."""
        now = time.time()
        for root, pattern, age in ((self.members, "*/*/*", self.config.membership_ttl),
                                   (self.manifests, "*/*/*", self.config.ttl)):
            for path in root.glob(pattern):
                try:
                    if now - path.stat().st_mtime > age:
                        path.unlink()
                except FileNotFoundError:
                    pass

    # -- manifests ------------------------------------------------------------------------

    def manifest(self, environ, start_response, name: str, reference: str):
        method = environ["REQUEST_METHOD"]
        if method not in ("GET", "HEAD"):
            return self.passthrough(environ, start_response)
        claims, refusal = self.authenticate(environ, start_response, name)
        if claims is None:
            return refusal
        if DIGEST_RE.match(reference) and self.knows(name, reference):
            kept = self._kept_manifest(reference)
            if kept is not None:
                self.node.metrics.add("hits")
                environ["msr.x_cache"] = "HIT"
                if method == "GET":  # a pull MSR does not see: reported to its audit trail
                    self.reports.add(environ["msr.token"], name, reference, environ.get("REMOTE_ADDR", ""))
                return self._send_manifest(environ, start_response, reference, *kept)
        return self._resolve(environ, start_response, name, reference)

    def _resolve(self, environ, start_response, name: str, reference: str):
        """Ask MSR for the manifest with the client's token. A GET is a pull, which MSR
        records; the node keeps the manifest and learns what it references. A HEAD (how
        containerd resolves a tag before it GETs the digest) stays a HEAD, which MSR does
        not count: the node learns the digest, and what it references if it keeps the
        manifest already, so the GET that follows is answered in the region (and reported)."""
        head = environ["REQUEST_METHOD"] == "HEAD"
        headers = {"Authorization": environ["HTTP_AUTHORIZATION"], "X-MSR-Cache": self.config.name,
                   "X-Request-ID": environ.get("msr.request_id", ""), "X-Forwarded-For": _forwarded_for(environ)}
        if environ.get("HTTP_ACCEPT"):
            headers["Accept"] = environ["HTTP_ACCEPT"]
        url = f"{self.config.msr_url}/v2/{name}/manifests/{reference}"
        try:
            answer = self.session.request("HEAD" if head else "GET", url, headers=headers, timeout=(5, 30))
            body = b"" if head else answer.content[:MAX_MANIFEST_BYTES + 1]
        except requests.RequestException as e:
            return self._unreachable(start_response, e)
        if answer.status_code != 200:
            return self._relay_answer(environ, start_response, answer, body)
        if head:
            return self._resolved_head(environ, start_response, name, reference, answer)
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        said = answer.headers.get("Docker-Content-Digest") or digest
        if len(body) > MAX_MANIFEST_BYTES or said != digest or (DIGEST_RE.match(reference) and reference != digest):
            log.warning("MSR's manifest %s:%s does not match its digest (%s, %s)", name, reference, said, digest)
            return _error(start_response, "502 Bad Gateway", "UNAVAILABLE", "MSR's manifest does not match its digest")
        media_type = answer.headers.get("Content-Type", "application/octet-stream")
        self._keep_manifest(digest, media_type, body)
        self.learn(name, {digest, *referenced_digests(body)})
        environ["msr.x_cache"] = "MISS" if DIGEST_RE.match(reference) else "RESOLVED"
        return self._send_manifest(environ, start_response, digest, media_type, body)

    def _resolved_head(self, environ, start_response, name, reference, answer):
        digest = answer.headers.get("Docker-Content-Digest", "")
        if not DIGEST_RE.match(digest) or (DIGEST_RE.match(reference) and reference != digest):
            return _error(start_response, "502 Bad Gateway", "UNAVAILABLE", "MSR's answer names no valid digest")
        kept = self._kept_manifest(digest)
        self.learn(name, {digest, *(referenced_digests(kept[1]) if kept else ())})
        environ["msr.x_cache"] = "RESOLVED"
        start_response("200 OK", [("Content-Type", answer.headers.get("Content-Type", "application/octet-stream")),
                                  ("Content-Length", answer.headers.get("Content-Length", "0")),
                                  ("Docker-Content-Digest", digest), API_VERSION, ("X-Cache", "RESOLVED")])
        return []

    def _send_manifest(self, environ, start_response, digest, media_type, body):
        start_response("200 OK", [("Content-Type", media_type), ("Content-Length", str(len(body))),
                                  ("Docker-Content-Digest", digest), API_VERSION,
                                  ("X-Cache", environ.get("msr.x_cache", ""))])
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]

    # -- blobs ---------------------------------------------------------------------------

    def blob(self, environ, start_response, name: str, digest: str):
        """A blob for a client of the region: its token, then what the node knows of the
        digest, then the node's store (a hit, or a fill with the client's token)."""
        claims, refusal = self.authenticate(environ, start_response, name)
        if claims is None:
            return refusal
        if environ["REQUEST_METHOD"] == "HEAD" and not self.node.has_blob(digest):
            # MSR's own answer: a HEAD asks whether the blob exists (a push checks each
            # layer so), which is no reason to fetch it whole.
            return self._ask_membership(environ, start_response, name, digest, answer_head=True)
        if not self.knows(name, digest):
            refusal = self._ask_membership(environ, start_response, name, digest)
            if refusal is not None:
                return refusal
        environ["msr.fill"] = ({}, {"Authorization": environ["HTTP_AUTHORIZATION"], "X-MSR-Cache": self.config.name})
        if environ.get("HTTP_X_MSR_REGION_FOLLOW") and self.node.region is not None:
            return self.node.follow(environ, start_response, digest)  # a node of the region asks
        return self.node._blob(environ, start_response, name, digest)

    def _ask_membership(self, environ, start_response, name, digest, answer_head=False):
        """Ask MSR once whether `digest` is a blob of `name` the client may read (HEAD
        with its token); None when it is (and the node remembers it), or with
        `answer_head`, MSR's answer to the client's HEAD."""
        try:
            answer = self.session.head(
                f"{self.config.msr_url}/v2/{name}/blobs/{digest}", allow_redirects=False, timeout=(5, 30),
                headers={"Authorization": environ["HTTP_AUTHORIZATION"], "X-MSR-Cache": self.config.name,
                         "X-Request-ID": environ.get("msr.request_id", "")})
        except requests.RequestException as e:
            log.warning("MSR unreachable: %s", e)
            return _error(start_response, "503 Service Unavailable", "UNAVAILABLE",
                          f"MSR is unreachable and this cache has not served {digest} of {name} yet",
                          [("Retry-After", "5")])
        if answer.status_code in (200, 307):  # 307: MSR's object storage holds it
            self.learn(name, [digest])
            if not answer_head:
                return None
            if answer.status_code == 200:
                return self._relay_answer(environ, start_response, answer, b"", length=answer.headers.get(
                    "Content-Length", "0"))
        if answer.status_code == 404:
            return _error(start_response, "404 Not Found", "BLOB_UNKNOWN", "blob unknown to registry")
        return self._relay_answer(environ, start_response, answer, b"")

    # -- everything else: MSR's answer -----------------------------------------------------

    def _relay_answer(self, environ, start_response, answer, body: bytes, length: str | None = None):
        """MSR's answer as it is (its challenge naming the node's relay, when on); a HEAD's
        `length` is the one MSR gave."""
        headers = [(k, v) for k, v in answer.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() not in ("content-length", "content-encoding")]
        headers = [self._rewritten(environ, k, v) for k, v in headers]
        headers.append(("Content-Length", length if length is not None else str(len(body))))
        start_response(f"{answer.status_code} {answer.reason or ''}".strip(), headers)
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]

    def _rewritten(self, environ, name: str, value: str) -> tuple[str, str]:
        if name.lower() == "www-authenticate" and self.config.token_relay and value.lower().startswith("bearer "):
            value = re.sub(r'realm="[^"]*"', f'realm="{self.realm(environ)}"', value)
        elif name.lower() == "location" and value.startswith(self.config.msr_url + "/"):
            value = value[len(self.config.msr_url):]  # stay on the regional address
        return name, value

    def passthrough(self, environ, start_response, target: str | None = None):
        """The request, streamed to MSR (or to `target`) and its answer streamed back."""
        self._last_client = time.monotonic()
        url = target or f"{self.config.msr_url}{environ.get('PATH_INFO', '')}"
        if environ.get("QUERY_STRING"):
            url += f"?{environ['QUERY_STRING']}"
        headers = {key[5:].replace("_", "-").title(): value for key, value in environ.items()
                   if key.startswith("HTTP_") and key[5:].replace("_", "-").lower() not in HOP_BY_HOP}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers["X-Forwarded-For"] = _forwarded_for(environ)
        headers["X-Request-ID"] = environ.get("msr.request_id", "")
        stream = environ.get("wsgi.input")
        length = environ.get("CONTENT_LENGTH")
        if length and length.isdigit():
            data = _Body(stream, int(length)) if int(length) else b""
        elif "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            data = _chunks(stream)
        else:
            data = None
        try:
            answer = self.session.request(environ["REQUEST_METHOD"], url, headers=headers, data=data, stream=True,
                                          allow_redirects=False, timeout=(5, 300))
        except requests.RequestException as e:
            return self._unreachable(start_response, e)
        response_headers = [self._rewritten(environ, k, v) for k, v in answer.headers.items()
                            if k.lower() not in HOP_BY_HOP]
        start_response(f"{answer.status_code} {answer.reason or ''}".strip(), response_headers)
        return _Relayed(answer)

    def relay_token(self, environ, start_response):
        """`/auth/token`, passed on to MSR's token service: tokens are issued and signed by
        MSR; the client saves the WAN handshakes (the node's connections are kept alive)."""
        try:
            realm = self.token_service()[1]
        except Unreachable as e:
            return self._unreachable(start_response, e)
        # The realm is MSR's public address; the node reaches MSR at its own (--msr).
        return self.passthrough(environ, start_response, target=f"{self.config.msr_url}{urlsplit(realm).path}")


class _Relayed:
    """MSR's answer streamed to the client as it arrives (bytes as they are: no decoding).
    Read to its end, its connection goes back to the pool, kept alive for the next request
    (a token request and the tag that follows cross the WAN on one connection); cut short,
    the connection is closed, since it is mid-body."""

    def __init__(self, answer):
        self._answer = answer
        self._finished = False

    def __iter__(self):
        yield from self._answer.raw.stream(CHUNK, decode_content=False)
        self._finished = True

    def close(self):
        if self._finished:
            self._answer.raw.release_conn()
        else:
            self._answer.close()
