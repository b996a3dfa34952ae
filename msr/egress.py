"""The one egress check: every request MSR sends on someone's behalf goes through here.

Users name URLs that MSR later requests: webhook endpoints, mirroring remotes, the token
realms those remotes name in their challenges, the redirects they answer, cache nodes.
Left alone, that lets any user make MSR reach what only MSR can reach (its own loopback
services, the cloud metadata endpoint at 169.254.169.254, the private network) and read
the answers back. So, by default, addresses that are not on the public internet are
refused: loopback, link-local, private and unique-local ranges, shared (CGNAT) space,
unspecified, multicast, broadcast and reserved addresses, and the IPv6 prefixes that
embed an IPv4 address (NAT64, 6to4), whose IPv4 could be any of those.

`MSR_OUTBOUND_ALLOW` opens what a deployment needs: CIDRs (`10.20.0.0/16`), single
addresses, host names (`qa-msr.internal`, or `*.corp.example` for a domain), each
optionally with a port (`127.0.0.1:5100`, `[::1]:5100`, `qa-msr.internal:443`).

The check runs on the address a connection is actually made to, at connect time (urllib3
connection classes below): a name that resolves to a public address when a policy is
saved and to 127.0.0.1 when the job runs (DNS rebinding) is refused then. Redirects are
followed by requests hop by hop, each hop a new check. `check_url` runs the same rules
ahead of time, for a clear 400 when a URL is saved.
"""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import create_connection

# Ranges `ipaddress` does not flag, or flags only on newer Pythons.
_EXTRA_REFUSED = [
    (ipaddress.ip_network("100.64.0.0/10"), "shared address space (CGNAT)"),
    (ipaddress.ip_network("192.0.0.0/24"), "IETF protocol assignments"),
    (ipaddress.ip_network("192.88.99.0/24"), "6to4 relay anycast"),
    (ipaddress.ip_network("64:ff9b::/96"), "NAT64 (embeds an IPv4 address)"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "NAT64 (embeds an IPv4 address)"),
    (ipaddress.ip_network("2002::/16"), "6to4 (embeds an IPv4 address)"),
]


class EgressRefused(Exception):
    """A request to an address the egress policy refuses. Not an OSError on purpose:
    urllib3 would retry and wrap one; this must reach the caller as it is."""

    def __init__(self, host: str, address: str, rule: str, port: int | None = None):
        self.host, self.address, self.rule, self.port = host, address, rule, port
        shown = host if host == address else f"{host} ({address})"
        super().__init__(f"outbound requests to {shown} are refused: {rule} address "
                         "(MSR_OUTBOUND_ALLOW opens it)")


@dataclass(frozen=True)
class Allowed:
    """One entry of MSR_OUTBOUND_ALLOW: a network or a host name, maybe with a port."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    host: str = ""  # exact name, or ".example.com" for a domain and its subdomains
    port: int | None = None

    def admits(self, host: str, address, port: int | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.network is not None:
            return address is not None and address.version == self.network.version and address in self.network
        host = host.lower().rstrip(".")
        if self.host.startswith("."):
            return host.endswith(self.host) or host == self.host[1:]
        return host == self.host


def parse_allow(entries: list[str]) -> list[Allowed]:
    """MSR_OUTBOUND_ALLOW's entries; ValueError naming a bad one."""
    allowed = []
    for entry in entries:
        text, port = entry.strip(), None
        if text.startswith("["):  # [v6] or [v6]:port
            inside, _, rest = text[1:].partition("]")
            if rest:
                if not rest.startswith(":") or not rest[1:].isdigit():
                    raise ValueError(f"{entry!r}: expected [IPv6]:port")
                port = int(rest[1:])
            text = inside
        elif text.count(":") == 1:  # host:port or IPv4:port (a bare IPv6 has several)
            text, _, port_text = text.partition(":")
            if not port_text.isdigit():
                raise ValueError(f"{entry!r}: the port must be a number")
            port = int(port_text)
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"{entry!r}: no such port")
        try:
            allowed.append(Allowed(network=ipaddress.ip_network(text, strict=False), port=port))
            continue
        except ValueError:
            pass
        name = text.lower().rstrip(".")
        if name.startswith("*."):
            name = name[1:]
        if not name or "/" in name or not all(part for part in name.lstrip(".").split(".")):
            raise ValueError(f"{entry!r}: expected a CIDR, an address or a host name")
        allowed.append(Allowed(host=name, port=port))
    return allowed


def refused_rule(address) -> str | None:
    """Why `address` is refused by default (None: a public address)."""
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    checks = [
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.version == 4 and address == ipaddress.IPv4Address("255.255.255.255"), "broadcast"),
        (address.version == 6 and address in ipaddress.ip_network("fc00::/7"), "unique-local"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
    ]
    for hit, rule in checks:
        if hit:
            return rule
    for network, rule in _EXTRA_REFUSED:
        if address.version == network.version and address in network:
            return rule
    return None


def _policy() -> list[Allowed]:
    from django.conf import settings

    return settings.OUTBOUND_ALLOW


def check_address(host: str, address, port: int | None, allow: list[Allowed] | None = None) -> None:
    """Raise EgressRefused unless a connection to `address` (resolved from `host`) is
    allowed."""
    allow = _policy() if allow is None else allow
    rule = refused_rule(address)
    if rule is None or any(entry.admits(host, address, port) for entry in allow):
        return
    raise EgressRefused(host, str(address), rule, port)


def _resolve(host: str, port: int) -> list[tuple]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def check_url(url: str) -> None:
    """The rules, ahead of time, for a URL being saved: http or https, a host, and every
    address the host resolves to now allowed. (The connection is checked again when it is
    made.) Raises EgressRefused, or ValueError for a URL that is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("Use an http:// or https:// URL with a host.")
    host = parts.hostname
    try:
        port = parts.port or _default_port(parts.scheme)
    except ValueError:
        raise ValueError("The port is not a number.") from None
    allow = _policy()
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        check_address(host, literal, port, allow)
        return
    if any(entry.network is None and entry.admits(host, None, port) for entry in allow):
        return
    try:
        infos = _resolve(host, port)
    except socket.gaierror:
        return  # unknown now; the connection is checked when it is made
    for info in infos:
        check_address(host, ipaddress.ip_address(info[4][0]), port, allow)


# -- the connection classes that check where they connect --------------------------------


def _guarded_socket(conn) -> socket.socket:
    """urllib3's `_new_conn`, resolving the host here so that the address checked is the
    address connected to (every address the name has must pass, not just one)."""
    host, port = conn._dns_host, conn.port
    try:
        infos = _resolve(host, port)
    except socket.gaierror as e:
        raise NameResolutionError(conn.host, conn, e) from e
    allow = _policy()
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        check_address(conn.host, address, port, allow)
        addresses.append(str(address))
    error = None
    for address in dict.fromkeys(addresses):
        try:
            return create_connection((address, port), conn.timeout, source_address=conn.source_address,
                                     socket_options=conn.socket_options)
        except socket.timeout as e:
            raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out. "
                                            f"(connect timeout={conn.timeout})") from e
        except OSError as e:
            error = e
    raise NewConnectionError(conn, f"Failed to establish a new connection: {error}") from error


class GuardedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _guarded_socket(self)


class GuardedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _guarded_socket(self)


class GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """requests' adapter with the guarded connection classes."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}

    def send(self, request, *args, **kwargs):
        if urlsplit(request.url).scheme not in ("http", "https"):
            raise EgressRefused(request.url, request.url, "non-HTTP")
        return super().send(request, *args, **kwargs)


def session() -> requests.Session:
    """A requests session whose every connection passes the egress check. Proxies from
    the environment are not used: a proxy's address would be checked instead of the
    target's (put MSR_OUTBOUND_ALLOW and the proxy's own rules in place of it)."""
    s = requests.Session()
    s.trust_env = False
    adapter = GuardedAdapter()
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def describe(error: Exception) -> str:
    """A refusal or a network failure in a few words, without the remote's own text."""
    if isinstance(error, EgressRefused):
        return str(error)
    text = str(error)
    for needle, words in (("Connection refused", "connection refused"),
                          ("Name or service not known", "unknown host"),
                          ("Temporary failure in name resolution", "unknown host (DNS)"),
                          ("NameResolutionError", "unknown host"),
                          ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted"),
                          ("Connection reset", "connection reset"),
                          ("RemoteDisconnected", "connection closed by the remote"),
                          ("Exceeded 30 redirects", "too many redirects")):
        if needle in text:
            return words
    if isinstance(error, requests.Timeout):
        return "timed out"
    if isinstance(error, requests.exceptions.SSLError):
        return "TLS error"
    return type(error).__name__
