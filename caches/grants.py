"""Grants: short-lived tokens, signed with MSR's token key, that let a cache (and the
caches above it) fetch and serve one blob of one repository for one user. They travel
in the redirect URL because clients do not send their Authorization header to another
host. Their claims are the protocol's (protocol/grants.py); this is MSR's side: which
cache a client goes to, and the grant for it."""

import ipaddress

from django.conf import settings

from caches.models import ContentCache, NetworkRule, UserCacheChoice
from msr.tokens import sign
from protocol import requestids
from protocol.grants import grant_claims


def issue_grant(cache: ContentCache, repository: str, digest: str, username: str) -> str:
    audience = [c.name for c in cache.chain()]
    return sign(grant_claims(audience, repository, digest, username), settings.CACHE_GRANT_TTL_SECONDS)


def choose_cache(username: str, client_ip: str | None) -> ContentCache | None:
    """The cache this client's layer pulls go to: the user's choice (a cache, or "MSR, no
    cache", which no network rule overrides), else the most specific network rule matching
    the client's address; only if enabled and healthy. Asked on every blob GET, so the
    user's choice is one query by username."""
    cache = None
    if username:
        choice = UserCacheChoice.objects.select_related("cache").filter(user__username=username).first()
        if choice is not None:
            if choice.cache is None:
                return None  # chose MSR itself
            cache = choice.cache
    if cache is None and client_ip:
        cache = _cache_for_address(client_ip)
    if cache is None or not cache.enabled or not cache.healthy:
        return None
    return cache


def _cache_for_address(client_ip: str) -> ContentCache | None:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return None
    best = None
    for rule in NetworkRule.objects.select_related("cache"):
        network = ipaddress.ip_network(rule.cidr, strict=False)
        if address.version == network.version and address in network:
            if best is None or network.prefixlen > best[0].prefixlen:
                best = (network, rule.cache)
    return best[1] if best else None


def redirect_url(cache: ContentCache, repository: str, digest: str, username: str) -> str:
    """The cache's URL for this blob, with the grant and the id of the request being
    served (`rid`: the client follows the redirect without our headers, and the cache
    logs this id, so one pull reads as one id in MSR's log and the cache's)."""
    grant = issue_grant(cache, repository, digest, username)
    url = f"{cache.url.rstrip('/')}/v2/{repository}/blobs/{digest}?grant={grant}"
    request_id = requestids.current()
    return f"{url}&rid={request_id}" if request_id else url
