"""Prometheus metrics of MSR, served at `/metrics`.

Counters live in each web process. Under `msr serve` / `msr up` gunicorn runs several
worker processes, so prometheus_client's multiprocess mode is on (PROMETHEUS_MULTIPROC_DIR,
set by msr/project/gunicorn_config.py): each process writes its values to mmap files and a
scrape adds up every process's files. Counting is an in-memory write under
prometheus_client's lock: no database, no I/O on the request path.

Mirroring jobs run in Celery workers, other processes and often other hosts; their
figures come from the Job table at scrape time instead (one grouped query), which is
right whatever the number of workers and survives their restarts (mirroring/metrics.py,
registered by the app: msr/extensions.py).
"""

import ipaddress
import logging
import os
import re

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram,
                               disable_created_metrics, generate_latest)

log = logging.getLogger(__name__)
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
disable_created_metrics()

# Seconds until the response starts; for a blob GET the body's streaming is not included.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("msr_http_requests", "HTTP requests answered, by route (URL pattern), method and status",
                   ["route", "method", "status"])
REQUEST_DURATION = Histogram("msr_http_request_duration_seconds",
                             "Time from request to response headers, by route and method",
                             ["route", "method"], buckets=_LATENCY_BUCKETS)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# (route, method, status) -> (counter child, histogram child): labels() takes a lock and
# builds a key on every call; the children are looked up once per combination.
_children: dict[tuple, tuple] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    key = (route, method if method in _METHODS else "other", status)
    children = _children.get(key)
    if children is None:
        children = _children[key] = (REQUESTS.labels(key[0], key[1], str(status)),
                                     REQUEST_DURATION.labels(key[0], key[1]))
    children[0].inc()
    children[1].observe(seconds)


# -- route templates -----------------------------------------------------------------------

_templates: dict[str, str] = {}
_CONVERTER = re.compile(r"<(?:\w+:)?(\w+)>")


def route_of(request) -> str:
    """The URL pattern that answered, as a template (`/v2/<name>/manifests/<reference>`):
    bounded by the number of routes, whatever paths clients send."""
    match = request.resolver_match
    if match is None:
        return "/static/" if request.path_info.startswith("/static/") else "unmatched"
    template = _templates.get(match.route)
    if template is None:
        template = _templates[match.route] = route_template(match.route)
    return template


def route_template(route: str) -> str:
    """`^v2/(?P<name>.+?)/blobs/uploads/?$` -> `/v2/<name>/blobs/uploads/`;
    `api/v0/accounts/<str:name>` -> `/api/v0/accounts/<name>`; a regular expression
    without `$` matches a prefix and ends in `*`."""
    open_ended = route.startswith("^") and not route.endswith("$")
    out, i = [], 0
    try:
        while i < len(route):
            if route.startswith("(?P<", i):
                close = route.index(">", i)
                out.append(f"<{route[i + 4:close]}>")
                i = _group_end(route, close + 1)
            else:
                out.append(route[i])
                i += 1
    except (ValueError, IndexError):
        return route  # not a pattern we can read: the pattern itself is still bounded
    template = _CONVERTER.sub(r"<\1>", "".join(out))
    template = template.replace("^", "").replace("$", "").replace("/?", "/").replace("\\", "")
    return "/" + template.lstrip("/") + ("*" if open_ended else "")


def _group_end(pattern: str, i: int) -> int:
    """Index just after the `)` closing the group whose body starts at `i`."""
    depth = 1
    while depth:
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":  # a character class may hold parentheses
            i += 1
            while pattern[i] != "]" or pattern[i - 1] == "\\":
                i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        i += 1
    return i


def exposition() -> bytes:
    """The text of a scrape: every web process's counters, then the job figures (left
    out while the database is unavailable: the request counters matter most then)."""
    from django.db import DatabaseError

    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    from msr import extensions

    tables = CollectorRegistry()
    for collector in extensions.metric_collectors:  # the apps' figures from their tables
        tables.register(collector)
    try:
        table_text = generate_latest(tables)
    except DatabaseError as e:
        log.warning("metrics: figures from the database left out, it is unavailable: %s", e)
        table_text = b""
    return generate_latest(registry) + table_text


# -- who may scrape ----------------------------------------------------------------------------


def address_allowed(request, networks) -> bool:
    """The client's address is in `networks` and it came straight to MSR. A request that
    passed a reverse proxy (X-Forwarded-For) does not count as coming from the proxy's
    address, typically 127.0.0.1."""
    if request.META.get("HTTP_X_FORWARDED_FOR"):
        return False
    from msr.addresses import in_networks

    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return in_networks(address, networks)


def metrics_view(request):
    """`GET /metrics`: to the addresses of MSR_METRICS_ALLOW, or with a system admin's
    Basic credentials (a personal access token as the password)."""
    from django.conf import settings
    from django.http import HttpResponse

    if not address_allowed(request, settings.METRICS_ALLOW):
        refusal = _refusal(request)
        if refusal is not None:
            return refusal
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


def _refusal(request):
    import base64
    import binascii

    from django.http import HttpResponse

    from msr.signin import METRICS, DirectoryUnavailable, SingleSignOnEnded, Throttled, sign_in

    scheme, _, encoded = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    user = None
    if scheme.lower() == "basic":
        try:
            username, _, password = base64.b64decode(encoded.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            username = password = ""
        try:
            credential = sign_in(request, username, password, METRICS) if username else None
        except Throttled as e:
            response = HttpResponse(f"metrics: {e}\n", status=429, content_type="text/plain")
            response["Retry-After"] = str(e.retry_after)
            return response
        except DirectoryUnavailable:
            return HttpResponse(f"metrics: {DirectoryUnavailable.message}\n", status=503, content_type="text/plain")
        except SingleSignOnEnded:
            credential = None
        user = credential.user if credential else None
    if user is None:
        response = HttpResponse("metrics: allowed from MSR_METRICS_ALLOW or with a system admin's credentials\n",
                                status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Basic realm="msr metrics"'
        return response
    if not user.is_superuser:
        return HttpResponse("metrics: only system admins\n", status=403, content_type="text/plain")
    return None
