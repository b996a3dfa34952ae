"""Celery tasks of the caches: health checks (on a schedule) and pre-warming."""

import logging

import requests
from celery import shared_task
from django.utils import timezone

from caches.models import CacheMetrics, ContentCache
from msr import egress
from msr.jsonsafe import loads

log = logging.getLogger(__name__)


def check_cache(cache: ContentCache) -> bool:
    """Ask the cache for its counters; a cache that does not answer in time stops
    receiving redirects until it does again. The error is a sentence for the console."""
    stats, error = None, ""
    try:
        with egress.session() as session:
            response = session.get(f"{cache.url.rstrip('/')}/stats", timeout=3)
        if response.status_code != 200:
            error = f"The cache answered HTTP {response.status_code} instead of its statistics."
        else:
            stats = loads(response.content)
            if not isinstance(stats, dict):
                raise ValueError("not an object")
            if stats.get("name") != cache.name:
                error = f"The node at this address is not {cache.name!r}: it calls itself {str(stats.get('name'))[:100]!r}."
    except egress.EgressRefused as e:
        error = f"MSR may not connect to it: {e}."
    except requests.RequestException as e:
        error = f"The cache did not answer: {egress.describe(e)}."
    except ValueError:
        stats, error = None, "The cache answered with something other than its statistics."
    if error:
        stats = None
    healthy = not error
    if healthy != cache.healthy:
        log.warning("cache %s is now %s%s", cache.name, "healthy" if healthy else "unhealthy",
                    f": {error}" if error else "")
    ContentCache.objects.filter(pk=cache.pk).update(healthy=healthy, last_error=error,
                                                    last_checked_at=timezone.now())
    if stats:
        CacheMetrics.objects.create(cache=cache, **{
            field: int(stats.get(field, 0)) for field in (
                "hits", "misses", "bytes_from_disk", "bytes_from_upstream", "upstream_fetches", "disk_used")})
    return healthy


@shared_task
def check_caches() -> dict:
    return {cache.name: check_cache(cache) for cache in ContentCache.objects.filter(enabled=True)}


def image_blobs(repository_name: str, reference: str) -> list[str]:
    """Digests of every blob of an image or index (config and layers of each child)."""

    from msr.models import Manifest
    from msr.services import INDEX_TYPES, resolve_manifest

    digest, media_type, content = resolve_manifest(repository_name, reference)
    document = loads(content)
    if media_type in INDEX_TYPES:
        namespace, _, name = repository_name.partition("/")
        blobs = []
        for child in Manifest.objects.filter(repository__namespace__name=namespace, repository__name=name,
                                             digest__in=[m["digest"] for m in document.get("manifests", [])]):
            blobs += image_blobs(repository_name, child.digest)
        return list(dict.fromkeys(blobs))
    return [document["config"]["digest"], *[layer["digest"] for layer in document.get("layers", [])]]


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

    token = sign({"typ": "cache-purge", "aud": [cache.name], "digest": digest}, 60)
    with egress.session() as session:
        response = session.post(f"{cache.url.rstrip('/')}/purge", headers={"Authorization": f"Bearer {token}"},
                                timeout=30)
    response.raise_for_status()
    return response.json()
