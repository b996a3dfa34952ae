"""WSGI entry point.

Registry protocol requests (`/v2/`, `/auth/`) go through a Django handler with no
middleware: they carry no session, cookie or CSRF token, and a pull makes many small
requests, so the browser middleware would be pure overhead there. Everything else (UI,
REST API, admin) goes through the full middleware stack of settings.MIDDLEWARE.
"""

import os

import django
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "msr.settings")
django.setup(set_prefix=False)

PROTOCOL_PREFIXES = ("/v2/", "/auth/token", "/auth/jwks.json")


class ProtocolHandler(WSGIHandler):
    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._get_response)


_protocol = ProtocolHandler()
_site = WSGIHandler()


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path.startswith(PROTOCOL_PREFIXES) or path == "/v2":
        return _protocol(environ, start_response)
    return _site(environ, start_response)
