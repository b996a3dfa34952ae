"""Celery tasks of the caches: health checks (on a schedule) and pre-warming."""

import logging

import requests
from celery import shared_task
from django.utils import timezone

from caches.models import CacheMetrics, ContentCache
from msr import egress
from msr.jsonsafe import loads
from protocol.grants import purge_claims

log = logging.getLogger(__name__)


def health_error(url: str, error: Exception | None = None, status: int | None = None,
                 reason: str = "") -> tuple[str, str]:
    """Why a cache at `url` failed its health check: a sentence for people, and the raw
    error (the HTTP library's text, or the status line) for the console's details."""
    url = url.rstrip("/")
    if status is not None:
        status_line = f"{status} {reason}".strip()
        return (f"The cache node at {url} answered {status_line} instead of its statistics.",
                f"GET {url}/stats: HTTP {status_line}")
    raw = f"{type(error).__name__}: {error}"
    if isinstance(error, egress.EgressRefused):
        return f"MSR may not connect to the cache node at {url}: {error}.", raw
    if isinstance(error, requests.RequestException):
        return f"Cannot reach the cache node at {url}: {egress.describe(error)}.", raw
    return f"The cache node at {url} answered with something other than its statistics.", raw


def check_cache(cache: ContentCache) -> bool:
    """Ask the cache for its counters; a cache that does not answer in time stops
    receiving redirects until it does again. The error is a sentence for the console,
    with the raw error beside it."""
    stats, error, detail = None, "", ""
    url = cache.url.rstrip("/")
    try:
        with egress.session() as session:
            response = session.get(f"{url}/stats", timeout=3)
        if response.status_code != 200:
            error, detail = health_error(url, status=response.status_code, reason=response.reason or "")
        else:
            stats = loads(response.content)
            if not isinstance(stats, dict):
                raise ValueError("the statistics are not a JSON object")
            if stats.get("name") != cache.name:
                error = (f"The node at {url} is not {cache.name!r}: "
                         f"it calls itself {str(stats.get('name'))[:100]!r}.")
    except (requests.RequestException, egress.EgressRefused, ValueError) as e:
        error, detail = health_error(url, e)
    if error:
        stats = None
    healthy = not error
    if healthy != cache.healthy:
        log.warning("cache %s is now %s%s", cache.name, "healthy" if healthy else "unhealthy",
                    f": {error}" if error else "")
    ContentCache.objects.filter(pk=cache.pk).update(
        healthy=healthy, last_error=_clip(error, 500), last_error_detail=_clip(detail, 2000),
        last_checked_at=timezone.now())
    if stats:
        CacheMetrics.objects.create(cache=cache, **{
            field: int(stats.get(field, 0)) for field in (
                "hits", "misses", "bytes_from_disk", "bytes_from_upstream", "upstream_fetches", "disk_used")})
    return healthy


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


@shared_task
def check_caches() -> dict:
    return {cache.name: check_cache(cache) for cache in ContentCache.objects.filter(enabled=True)}


def image_blobs(repository_name: str, reference: str) -> list[str]:
    """Digests of every blob of an image or index (config and layers of each child)."""

    from msr.manifests import ParsedManifest
    from msr.services import resolve_manifest

    _, media_type, content = resolve_manifest(repository_name, reference)
    parsed = ParsedManifest(content, media_type)
    blobs = list(parsed.blob_digests)
    for child in parsed.child_digests:
        blobs += image_blobs(repository_name, child)
    return list(dict.fromkeys(blobs))


@shared_task(autoretry_for=(requests.ConnectionError, requests.Timeout), retry_backoff=5, max_retries=5)
def prewarm(cache_id: int, repository_name: str, reference: str) -> dict:
    """Make a cache fetch every blob of an image: request each through the cache with a
    grant (the body is read and dropped here). Already cached blobs cost a disk read."""
    from caches.grants import redirect_url

    cache = ContentCache.objects.get(pk=cache_id)
    fetched = 0
    with egress.session() as session:
        for digest in image_blobs(repository_name, reference):
            with session.get(redirect_url(cache, repository_name, digest, "prewarm"), stream=True,
                             timeout=(5, 300)) as r:
                r.raise_for_status()
                for _ in r.iter_content(1024 * 1024):
                    pass
            fetched += 1
    return {"cache": cache.name, "blobs": fetched}


def purge(cache: ContentCache, digest: str | None = None) -> dict:

    from msr.tokens import sign

    token = sign(purge_claims(cache.name, digest), 60)
    with egress.session() as session:
        response = session.post(f"{cache.url.rstrip('/')}/purge", headers={"Authorization": f"Bearer {token}"},
                                timeout=30)
    response.raise_for_status()
    return response.json()
