"""Celery tasks of the caches: health checks (on a schedule) and pre-warming."""

import logging

import requests
from celery import shared_task
from django.utils import timezone

from caches.models import CacheMetrics, ContentCache

log = logging.getLogger(__name__)


def check_cache(cache: ContentCache) -> bool:
    """Ask the cache for its counters; a cache that does not answer in time stops
    receiving redirects until it does again."""
    try:
        response = requests.get(f"{cache.url.rstrip('/')}/stats", timeout=3)
        response.raise_for_status()
        stats = response.json()
        error = "" if stats.get("name") == cache.name else f"the node at this URL is {stats.get('name')!r}"
    except (requests.RequestException, ValueError) as e:
        stats, error = None, f"{type(e).__name__}: {e}"[:500]
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
