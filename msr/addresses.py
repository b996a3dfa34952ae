"""The client's address when MSR sits behind reverse proxies (nginx terminating TLS).

REMOTE_ADDR is then the proxy's address. A proxy in MSR_FORWARDED_ALLOW_IPS appends the
address it saw to X-Forwarded-For; walking that list from the right, past the trusted
proxies, the first address is the client's (what a client writes into the header itself
is further left and is never reached). With "*" every peer is trusted, for one hop: the
rightmost address is the client's. A request from an untrusted peer keeps REMOTE_ADDR,
whatever headers it sends.
"""

import ipaddress

from django.conf import settings


def in_networks(address, networks) -> bool:
    """`address` (an ip_address; IPv4-mapped IPv6 counts as IPv4) is in one of `networks`."""
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address.version == network.version and address in network for network in networks)


def _trusted(address) -> bool:
    networks = settings.FORWARDED_ALLOW
    return networks is None or in_networks(address, networks)


def _parse(value: str):
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def client_address(meta) -> str | None:
    """The client's IP address for a WSGI environ (or request.META)."""
    peer = meta.get("REMOTE_ADDR") or None
    forwarded = meta.get("HTTP_X_FORWARDED_FOR")
    if not forwarded or peer is None:
        return peer
    peer_address = _parse(peer)
    if peer_address is None or not _trusted(peer_address):
        return peer
    hops = [_parse(hop) for hop in forwarded.split(",")]
    if settings.FORWARDED_ALLOW is None:
        return str(hops[-1]) if hops[-1] is not None else peer
    for hop in reversed(hops):
        if hop is None:
            return peer  # a garbled header: do not guess
        if not _trusted(hop):
            return str(hop)
    return str(hops[0]) if hops[0] is not None else peer
