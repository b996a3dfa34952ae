"""Celery tasks of the caches: health checks (on a schedule) and pre-warming."""

import logging
import math
from datetime import UTC, datetime

import requests
from celery import shared_task
from django.utils import timezone

from caches.models import CacheMetrics, ContentCache
from caches.region import NODE_HEALTHY_SECONDS
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


# What MSR keeps of a node's /stats. Everything in it comes from the network: a node (or
# whatever answers at its address) may send anything, and none of it may fail the check
# with an exception or fill the database.
STATS_MAX_BYTES = 1024 * 1024
MAX_NODES = 200
COUNTER_FIELDS = ("hits", "misses", "bytes_from_disk", "bytes_from_upstream", "upstream_fetches", "disk_used")
_BIGINT_MAX = 2**63 - 1


def check_cache(cache: ContentCache) -> bool:
    """Ask the cache for its counters; a cache that does not answer in time stops
    receiving redirects until it does again. The error is a sentence for the console,
    with the raw error beside it.

    Steps: GET <url>/stats (at most STATS_MAX_BYTES); check the name; record health,
    and, from a region's answer, its store and nodes (region_of); record the counters
    (for a region, its totals) as one CacheMetrics sample."""
    stats, error, detail = None, "", ""
    url = cache.url.rstrip("/")
    try:
        with egress.session() as session, session.get(f"{url}/stats", timeout=3, stream=True) as response:
            if response.status_code != 200:
                error, detail = health_error(url, status=response.status_code, reason=response.reason or "")
            else:
                stats = loads(_read_at_most(response, STATS_MAX_BYTES))
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
    now = timezone.now()
    changes = {"healthy": healthy, "last_error": _clip(error, 500), "last_error_detail": _clip(detail, 2000),
               "last_checked_at": now}
    if stats:
        # A failed check keeps the last report: which nodes were alive when it last answered.
        store, nodes = region_of(stats)
        changes.update(store=store, nodes=nodes, nodes_reported_at=now if store else None)
    ContentCache.objects.filter(pk=cache.pk).update(**changes)
    if stats:
        CacheMetrics.objects.create(cache=cache, at=now, **counters_of(stats))
    return healthy


def _read_at_most(response, limit: int) -> bytes:
    body = bytearray()
    for chunk in response.iter_content(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise ValueError(f"the statistics are larger than {limit // 1024} KiB")
    return bytes(body)


def _count(value) -> int | None:
    """A counter as a node reports it: a whole number within a bigint, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return min(max(int(value), 0), _BIGINT_MAX)


def counters_of(stats: dict) -> dict:
    """The sample's counters; one the node left out or sent as something else counts 0.
    In a region these are the region's sums and `disk_used` its bytes in the store."""
    return {field: _count(stats.get(field)) or 0 for field in COUNTER_FIELDS}


def region_of(stats: dict) -> tuple[str, list[dict]]:
    """(store, nodes) of a region's /stats, ("", []) for a node with its own disk (no
    "region" object). Each node is {"node", "url", "healthy", "age", "seen"}: entries
    without a node id, and repeats of one, are left out; at most MAX_NODES, by node id."""
    region = stats.get("region")
    if not isinstance(region, dict):
        return "", []
    store = stats.get("store")
    store = _clip(store, 500) if isinstance(store, str) and store else "(not named)"
    reported = region.get("nodes")
    nodes = {}
    for entry in reported if isinstance(reported, list) else ():
        node = _node(entry)
        if node is not None and node["node"] not in nodes:
            nodes[node["node"]] = node
            if len(nodes) == MAX_NODES:
                log.warning("the region's node list at %s is cut at %d nodes", store, MAX_NODES)
                break
    return store, sorted(nodes.values(), key=lambda node: node["node"])


def _node(entry) -> dict | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("node"), str) or not entry["node"].strip():
        return None
    age = entry.get("age")
    age = None if isinstance(age, bool) or not isinstance(age, (int, float)) or not math.isfinite(age) \
        else round(min(max(float(age), 0.0), 10 * 365 * 86400.0), 1)
    healthy = entry.get("healthy")
    if not isinstance(healthy, bool):
        healthy = age is not None and age < NODE_HEALTHY_SECONDS  # the node's own rule
    url = entry.get("url")
    return {"node": _clip(entry["node"].strip(), 100), "url": _clip(url, 500) if isinstance(url, str) else "",
            "healthy": healthy, "age": age, "seen": _instant(entry.get("seen"))}


def _instant(value) -> str | None:
    """A heartbeat's time as ISO 8601 in UTC: the node's seconds since the epoch, or an
    ISO 8601 text; anything else is unknown (None)."""
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            moment = datetime.fromtimestamp(value, tz=UTC)
        elif isinstance(value, str) and len(value) <= 64:
            moment = datetime.fromisoformat(value)
            moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        else:
            return None
    except (ValueError, OverflowError, OSError):
        return None
    return moment.isoformat()


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
