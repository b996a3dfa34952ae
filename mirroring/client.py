"""A Distribution API client on `requests`, for any registry: MSR, CNCF Distribution,
or anything else that speaks the OCI distribution spec with Docker token auth.

Failures are sorted for the job runner: `Transient` (network errors, 5xx, 429) are
retried with backoff; `Permanent` (other 4xx, bad credentials, digest mismatches, an
address the egress policy refuses) fail the job at once. Credentials go only into
Authorization headers and are never logged or put into an exception message.

Every connection goes through the egress check (msr/egress.py): the remote, the token
realm its challenge names and every redirect it answers. What a remote answers reaches
job logs and API errors only as a status code, a registry error code and a short message:
a policy must not be a way to read what some other server says.
"""

import os
import re
import tempfile
import threading
import time
from urllib.parse import urljoin, urlsplit

import requests

from msr import egress
from msr.jsonsafe import loads as json_loads
from msr.manifests import ACCEPT

USER_AGENT = "MSR-Mirroring/1"
PIECE = 1024 * 1024
MAX_TAG_PAGES = 1000  # a remote whose Link pages never end is cut here


class RegistryError(Exception):
    transient = False

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Transient(RegistryError):
    transient = True


class Permanent(RegistryError):
    pass


def normalize_host(value: str) -> str:
    """`qa.example.com` → `https://qa.example.com`; a trailing slash or /v2 is dropped."""
    value = value.strip().rstrip("/")
    if value.endswith("/v2"):
        value = value[:-3]
    if "://" not in value:
        value = "https://" + value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("Use a registry address like https://registry.example.com[:port].")
    if parts.query or parts.fragment or parts.username:
        raise ValueError("A registry address has no query, fragment or credentials.")
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


SHORT_MESSAGE = 120
_CODE_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,39}$|^[a-z][a-z0-9_]{0,39}$")


def _short(text: str) -> str:
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text if len(text) <= SHORT_MESSAGE else text[:SHORT_MESSAGE - 1] + "…"


def _remote_error(response: requests.Response) -> str:
    """What may be repeated of a remote's error answer: its OCI error code and a short
    message (or an OAuth error code and a short description). Any other body is not
    repeated: the status code says enough, and the body may be anything."""
    if len(response.content) > 64 * 1024:
        return ""
    try:
        document = json_loads(response.content)
    except ValueError:
        return ""
    if not isinstance(document, dict):
        return ""
    errors = document.get("errors")
    if isinstance(errors, list):
        for e in errors:
            if isinstance(e, dict) and isinstance(e.get("code"), str) and _CODE_RE.match(e["code"]):
                message = e.get("message") if isinstance(e.get("message"), str) else ""
                return f"{e['code']}: {_short(message)}".rstrip(": ")
        return ""
    code = document.get("error")
    if isinstance(code, str) and _CODE_RE.match(code):
        description = document.get("error_description")
        return f"{code}: {_short(description)}" if isinstance(description, str) else code
    return ""


def _challenge(header: str) -> tuple[str, dict]:
    scheme, _, rest = header.partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


class BlobBody:
    """A request body of known length read from a file object in 1 MiB pieces, counting
    the bytes sent (constant memory; requests sends Content-Length, not chunked)."""

    def __init__(self, fileobj, length: int, on_bytes=None):
        self.fileobj, self.length, self.on_bytes = fileobj, length, on_bytes

    def __len__(self):
        return self.length

    def __iter__(self):
        left = self.length
        while left > 0:
            piece = self.fileobj.read(min(PIECE, left))
            if not piece:
                raise Transient(f"the source ended {left} bytes early")
            left -= len(piece)
            if self.on_bytes:
                self.on_bytes(len(piece))
            yield piece


class Remote:
    """One repository on a registry, with credentials (username + password or token)."""

    def __init__(self, host: str, repository: str, username: str = "", secret: str = "",
                 secret_is_token: bool = False, ca_pem: str = "", skip_tls_verify: bool = False,
                 timeout: float = 60):
        self.base = normalize_host(host)
        self.repository = repository
        self.username, self._secret, self._secret_is_token = username, secret, secret_is_token
        self.timeout = timeout
        self.session = egress.session()
        self.session.headers["User-Agent"] = USER_AGENT
        self._ca_file = None
        if skip_tls_verify:
            self.session.verify = False
        elif ca_pem.strip():
            fd, self._ca_file = tempfile.mkstemp(prefix="msr-remote-ca-", suffix=".pem")
            with os.fdopen(fd, "w") as f:
                f.write(ca_pem)
            self.session.verify = self._ca_file
        self._tokens: dict[str, tuple[str, float]] = {}
        self._auth_lock = threading.Lock()
        self._basic = False
        self._no_auth = False  # the registry answered without asking for credentials

    def close(self) -> None:
        self.session.close()
        if self._ca_file:
            os.unlink(self._ca_file)
            self._ca_file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def name(self) -> str:
        """host/repository, for logs."""
        return f"{urlsplit(self.base).netloc}/{self.repository}"

    def same_registry(self, other: "Remote") -> bool:
        return self.base == other.base

    # -- authentication -------------------------------------------------------------------

    def _scope(self, push: bool) -> str:
        return f"repository:{self.repository}:{'pull,push' if push else 'pull'}"

    def _credentials(self):
        if self._secret and (self.username or not self._secret_is_token):
            return (self.username, self._secret)
        return None

    def _authorize(self, response: requests.Response, scope: str) -> None:
        """Answer a 401's challenge: fetch a bearer token for `scope` or use Basic."""
        scheme, params = _challenge(response.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if not self._credentials():
                raise Permanent(f"{self.name}: the registry wants credentials and the policy has none", 401)
            self._basic = True
            return
        if scheme != "bearer" or "realm" not in params:
            raise Permanent(f"{self.name}: unsupported authentication challenge "
                            f"{response.headers.get('WWW-Authenticate', '')!r}", 401)
        if urlsplit(params["realm"]).scheme not in ("http", "https"):
            raise Permanent(f"{self.name}: the token realm is not an http(s) URL", 401)
        query = {"service": params.get("service", "")}
        query["scope"] = params.get("scope") or scope
        if scope not in query["scope"].split(" "):
            query["scope"] = f"{query['scope']} {scope}".strip()
        try:
            if self._secret and self._secret_is_token and not self.username:
                token_response = self.session.get(params["realm"], params=query, timeout=self.timeout,
                                                  headers={"Authorization": f"Bearer {self._secret}"})
            else:
                token_response = self.session.get(params["realm"], params=query, timeout=self.timeout,
                                                  auth=self._credentials())
        except egress.EgressRefused as e:
            raise Permanent(f"{self.name}: token service: {e}") from None
        except requests.RequestException as e:
            raise Transient(f"{self.name}: token service unreachable: {_reason(e)}") from None
        if token_response.status_code in (401, 403):
            detail = _remote_error(token_response)
            raise Permanent(f"{self.name}: the token service refused the credentials "
                            f"(HTTP {token_response.status_code}{': ' + detail if detail else ''})",
                            token_response.status_code)
        self._raise_for(token_response, "token request")
        try:
            document = json_loads(token_response.content)
            token = document.get("token") or document["access_token"]
            if not isinstance(token, str):
                raise ValueError("not a token")
        except (ValueError, KeyError, AttributeError):
            raise Permanent(f"{self.name}: the token service answered without a token") from None
        expires_in = document.get("expires_in")
        expires_in = expires_in if isinstance(expires_in, int) and 0 < expires_in < 86400 else 60
        self._tokens[scope] = (token, time.monotonic() + max(expires_in - 10, 5))

    def _auth_headers(self, scope: str) -> dict:
        if self._basic:
            return {}
        token = self._tokens.get(scope)
        if token and token[1] > time.monotonic():
            return {"Authorization": f"Bearer {token[0]}"}
        return {}

    def request(self, method: str, url: str, push: bool = False, expect=(200,), **kwargs) -> requests.Response:
        """One request with authentication; a 401 is answered once. Raises Transient or
        Permanent unless the status is in `expect`."""
        scope = self._scope(push)
        if isinstance(kwargs.get("data"), BlobBody) and not (self._basic or self._no_auth) \
                and not self._auth_headers(scope):
            self.login(push)  # a body read from a stream cannot be sent twice
        if not url.startswith(("http://", "https://")):
            url = urljoin(self.base + "/", url.lstrip("/"))
        for attempt in (1, 2):
            headers = {**kwargs.pop("headers", {}), **self._auth_headers(scope)}
            auth = self._credentials() if self._basic else None
            try:
                response = self.session.request(method, url, headers=headers, auth=auth,
                                                timeout=self.timeout, allow_redirects=True, **kwargs)
            except egress.EgressRefused as e:
                raise Permanent(f"{self.name}: {method} {urlsplit(url).path}: {e}") from None
            except requests.RequestException as e:
                raise Transient(f"{self.name}: {method} {urlsplit(url).path} failed: {_reason(e)}") from None
            if response.status_code == 401 and attempt == 1 and not isinstance(kwargs.get("data"), BlobBody):
                with self._auth_lock:
                    self._authorize(response, scope)
                kwargs["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
                continue
            break
        if response.status_code == 401 and isinstance(kwargs.get("data"), BlobBody):
            # the token expired while a stream was being sent: the next attempt logs in again
            raise Transient(f"{self.name}: {method} {urlsplit(url).path}: authorization expired", 401)
        if response.status_code not in expect:
            self._raise_for(response, f"{method} {urlsplit(url).path}")
        return response

    def _raise_for(self, response: requests.Response, what: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = _remote_error(response)
        message = f"{self.name}: {what}: HTTP {status}" + (f": {detail}" if detail else "")
        if status >= 500 or status == 429:
            raise Transient(message, status)
        raise Permanent(message, status)

    def login(self, push: bool = False) -> None:
        """Fetch a token for pull (and push) up front, so an upload body is rarely the
        request that meets the 401: one request, whose challenge names the scope."""
        response = self.request("HEAD", f"/v2/{self.repository}/manifests/latest", push=push,
                                expect=(200, 404), headers={"Accept": ACCEPT})
        response.close()
        if not self._basic and not self._tokens:
            self._no_auth = True

    # -- reading ----------------------------------------------------------------------------

    def manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest by tag or digest."""
        from django.conf import settings

        response = self.request("GET", f"/v2/{self.repository}/manifests/{reference}",
                                headers={"Accept": ACCEPT}, stream=True)
        try:
            body = response.raw.read(settings.MAX_MANIFEST_BYTES + 1, decode_content=True)
        except Exception as e:  # urllib3's ProtocolError, ReadTimeoutError, OSError
            raise Transient(f"{self.name}: manifest {reference}: download cut: {type(e).__name__}") from None
        finally:
            response.close()
        if len(body) > settings.MAX_MANIFEST_BYTES:
            raise Permanent(f"{self.name}: manifest {reference} is larger than {settings.MAX_MANIFEST_BYTES} bytes")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        from msr.references import digest_of

        digest = digest_of(body, reference.partition(":")[0] if ":" in reference else "sha256")
        if ":" in reference and digest != reference:
            raise Permanent(f"{self.name}: manifest {reference} has digest {digest}")
        return body, media_type, digest

    def manifest_digest(self, reference: str) -> str | None:
        """The digest a tag points at, or None if the tag does not exist."""
        response = self.request("HEAD", f"/v2/{self.repository}/manifests/{reference}", expect=(200, 404),
                                headers={"Accept": ACCEPT})
        if response.status_code == 404:
            return None
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            digest = self.manifest(reference)[2]
        return digest

    def tags(self) -> list[str]:
        """Every tag, following Link pagination."""
        from msr.references import is_valid_tag

        tags, url, seen = [], f"/v2/{self.repository}/tags/list?n=1000", set()
        while url and url not in seen and len(seen) < MAX_TAG_PAGES:
            seen.add(url)
            response = self.request("GET", url, expect=(200, 404))
            if response.status_code == 404:
                return []
            tags += [t for t in _json_list(response, "tags") if isinstance(t, str) and is_valid_tag(t)]
            link = response.headers.get("Link", "")
            match = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', link)
            url = urljoin(response.url, match.group(1)) if match else None
        return list(dict.fromkeys(tags))

    def referrers(self, digest: str) -> list[dict]:
        """Descriptors of the manifests whose subject is `digest`: the referrers API, or
        the tag schema (`sha256-<hex>`) on registries without it."""
        response = self.request("GET", f"/v2/{self.repository}/referrers/{digest}", expect=(200, 404, 400),
                                headers={"Accept": "application/vnd.oci.image.index.v1+json"})
        if response.status_code == 200 and "json" in response.headers.get("Content-Type", ""):
            return _json_list(response, "manifests")
        fallback = digest.replace(":", "-")
        response = self.request("GET", f"/v2/{self.repository}/manifests/{fallback}", expect=(200, 404),
                                headers={"Accept": "application/vnd.oci.image.index.v1+json"})
        if response.status_code == 200:
            return _json_list(response, "manifests")
        return []

    def blob_exists(self, digest: str) -> bool:
        response = self.request("HEAD", f"/v2/{self.repository}/blobs/{digest}", push=True, expect=(200, 404))
        return response.status_code == 200

    def open_blob(self, digest: str) -> requests.Response:
        """A streaming response; the caller reads `.raw` and closes it."""
        return self.request("GET", f"/v2/{self.repository}/blobs/{digest}", stream=True)

    # -- writing ----------------------------------------------------------------------------

    def mount(self, digest: str, source_repository: str) -> bool:
        """Cross-repository mount on the same registry; False if it started an upload."""
        response = self.request("POST", f"/v2/{self.repository}/blobs/uploads/", push=True, expect=(201, 202),
                                params={"mount": digest, "from": source_repository})
        if response.status_code == 201:
            return True
        location = response.headers.get("Location")
        if location:
            self.request("DELETE", location, push=True, expect=(200, 202, 204, 404))
        return False

    def upload(self, digest: str, size: int, fileobj, chunk_bytes: int, on_bytes=None) -> None:
        """Upload `size` bytes read from `fileobj` as blob `digest`: one PUT up to
        `chunk_bytes`, PATCH chunks with Content-Range above it, then the closing PUT."""
        response = self.request("POST", f"/v2/{self.repository}/blobs/uploads/", push=True, expect=(202,))
        location = self._location(response)
        try:
            if size > chunk_bytes:
                offset = 0
                while offset < size:
                    length = min(chunk_bytes, size - offset)
                    response = self.request(
                        "PATCH", location, push=True, expect=(202, 204),
                        data=BlobBody(fileobj, length, on_bytes),
                        headers={"Content-Type": "application/octet-stream",
                                 "Content-Range": f"{offset}-{offset + length - 1}"})
                    location = self._location(response)
                    offset += length
                body, length = b"", 0
            else:
                body, length = BlobBody(fileobj, size, on_bytes), size
            sep = "&" if "?" in location else "?"
            self.request("PUT", f"{location}{sep}digest={digest}", push=True, expect=(201, 204),
                         data=body, headers={"Content-Type": "application/octet-stream",
                                             "Content-Length": str(length)})
        except RegistryError:
            try:
                self.request("DELETE", location, push=True, expect=(200, 202, 204, 404, 405))
            except RegistryError:
                pass
            raise

    def _location(self, response: requests.Response) -> str:
        location = response.headers.get("Location")
        if not location:
            raise Permanent(f"{self.name}: upload answered without a Location")
        return urljoin(response.url, location)

    def put_manifest(self, reference: str, body: bytes, media_type: str) -> tuple[str, bool]:
        """PUT a manifest; (digest the registry reports, whether it indexed a subject)."""
        response = self.request("PUT", f"/v2/{self.repository}/manifests/{reference}", push=True,
                                expect=(201, 200, 204), data=body, headers={"Content-Type": media_type})
        from msr.references import digest_of

        return (response.headers.get("Docker-Content-Digest") or digest_of(body),
                bool(response.headers.get("OCI-Subject")))

    def add_referrer_to_fallback_tag(self, subject: str, descriptor: dict) -> None:
        """The referrers tag schema of the distribution spec, for registries without the
        referrers API: the tag `<alg>-<hex>` of the subject holds an index listing its
        referrers; add `descriptor` to it."""
        import json

        tag = subject.replace(":", "-")
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
        response = self.request("GET", f"/v2/{self.repository}/manifests/{tag}", expect=(200, 404),
                                headers={"Accept": "application/vnd.oci.image.index.v1+json"})
        if response.status_code == 200:
            try:
                found = json_loads(response.content)
                if isinstance(found, dict) and isinstance(found.get("manifests"), list):
                    index = found
            except ValueError:
                pass
        if any(m.get("digest") == descriptor["digest"] for m in index["manifests"] if isinstance(m, dict)):
            return
        index["manifests"].append(descriptor)
        self.put_manifest(tag, json.dumps(index, separators=(",", ":")).encode(),
                          "application/vnd.oci.image.index.v1+json")

    def check_push(self) -> None:
        """Raise if the credentials cannot push to the repository: starts an upload and
        cancels it, which is the only test every registry answers the same way."""
        response = self.request("POST", f"/v2/{self.repository}/blobs/uploads/", push=True, expect=(202,))
        location = response.headers.get("Location")
        if location:
            self.request("DELETE", urljoin(response.url, location), push=True,
                         expect=(200, 202, 204, 404, 405))

    def check_pull(self) -> None:
        self.tags()


def _reason(error: requests.RequestException) -> str:
    """A network failure in a few words ("connection refused", "timed out", ...)."""
    words = egress.describe(error)
    if words == "TLS certificate not trusted":
        return "TLS certificate not trusted (set remoteCA)"
    return words


def _json_list(response: requests.Response, key: str) -> list:
    """`document[key]` of a JSON answer when it is a list (else empty), bounded in depth."""
    try:
        document = json_loads(response.content)
    except ValueError:
        raise Permanent(f"{urlsplit(response.url).netloc}: answered with invalid JSON") from None
    value = document.get(key) if isinstance(document, dict) else None
    return value if isinstance(value, list) else []
