"""WSGI entry point.

Registry protocol requests (`/v2/`, `/auth/`) go through a Django handler with no
middleware: they carry no session, cookie or CSRF token, and a pull makes many small
requests, so the browser middleware would be pure overhead there. So do the probes and
the scrape (`/healthz`, `/readyz`, `/metrics`). Everything else (UI, REST API, admin)
goes through the full middleware stack of settings.MIDDLEWARE.

Both handlers give every request an id (msr.project.logs) and count it by route, method and
status (msr.project.metrics): a few microseconds, no database.
"""

import os
import time

import django
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "msr.project.settings")
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402  (after setup)
from django.utils.functional import SimpleLazyObject, empty  # noqa: E402

from msr import instruments  # noqa: E402
from msr.project import logs, metrics  # noqa: E402
from protocol import requestids  # noqa: E402

PROTOCOL_PREFIXES = ("/v2/", "/auth/token", "/auth/jwks.json")
OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
ACCESS_LOG = settings.ACCESS_LOG


class ObservedHandler(WSGIHandler):
    def get_response(self, request):
        started = time.perf_counter()
        request_id = requestids.from_client(request.META.get("HTTP_X_REQUEST_ID"))
        context = instruments.begin(request_id)
        try:
            response = super().get_response(request)
            seconds = time.perf_counter() - started
            route = metrics.route_of(request)
            metrics.observe_request(route, request.method, response.status_code, seconds)
            response[requestids.HEADER] = request_id
            if ACCESS_LOG:
                logs.log_access(request.method, route, response.status_code, seconds, _username(request))
            return response
        finally:
            instruments.end(context)


def _username(request) -> str:
    """Who made the request, if the request already found out (no query made here)."""
    name = instruments.current_user()  # the token service names whom it issued a token to
    if name:
        return name
    user = request.__dict__.get("user")  # set by the session middleware or by DRF
    if isinstance(user, SimpleLazyObject):
        user = None if user._wrapped is empty else user._wrapped
    if user is not None:
        return getattr(user, "username", "") or ""
    scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() == "bearer" and request.path_info.startswith("/v2"):
        from msr.tokens import InvalidToken, verify_access_token

        try:
            return verify_access_token(token.strip()).get("sub") or ""  # already verified: from the cache
        except InvalidToken:
            return ""
    return ""


class ProtocolHandler(ObservedHandler):
    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._get_response)


_protocol = ProtocolHandler()
_site = ObservedHandler()


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path.startswith(PROTOCOL_PREFIXES) or path == "/v2" or path in OPERATIONS_PATHS:
        return _protocol(environ, start_response)
    return _site(environ, start_response)
