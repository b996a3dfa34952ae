"""Read-only mode at the door of the pages and the REST API (msr/readonly.py decides
whether it is on). The registry protocol (`/v2/`) skips the middleware stack
(msr/project/wsgi.py): its views refuse writes themselves, in the OCI envelope
(msr/registry/base.py, `errors.ReadOnly`: 405 UNSUPPORTED, as Distribution).

Here, every write while the registry is read-only is answered before any view runs:
- `/api/v0/`: `503 {"detail": ...}` with `Retry-After`, as Harbor's API answers in its
  read-only mode: the resource is there, the service is briefly not taking changes;
- pages: a readable 503 page (the banner says why), never a 500.

Reads (GET, HEAD, OPTIONS) always pass. So do the writes that leave read-only mode or
that keep sign-in and security working: the token service (pull tokens, and push tokens
too: a token states rights, the write itself is refused with the readable message, where
a downscoped token would make clients print "denied"), signing in and out, ending
sign-ins and revoking tokens, the pulls a cache node reports for the audit trail, and
queuing or canceling a job (a job that would write waits for the end of read-only mode,
mirroring/jobs.py). Creating tokens and everything else that changes the registry's
state is refused.
"""

import re

from django.http import JsonResponse
from django.shortcuts import render

from msr import readonly

SAFE_METHODS = {"GET", "HEAD", "OPTIONS", "TRACE"}
# The registry protocol and the token service answer for themselves (see above).
PROTOCOL_PREFIXES = ("/v2/", "/auth/")

# Writes that go on in read-only mode, by path (without the leading slash).
ALLOWED_WRITES = re.compile("|".join([
    r"api/v0/meta/settings",                         # leaving read-only mode
    r"api/v0/sessions(/[^/]+)?",                     # ending sign-ins
    r"api/v0/(tokens|refreshTokens)/[0-9]+",         # revoking (DELETE; PATCH is refused below)
    r"api/v0/content_caches/pulls",                  # a cache node's report of regional pulls
    r"api/v0/jobs", r"api/v0/jobs/[0-9]+/cancel",    # queuing a job (it waits) and canceling one
    r"console/jobs/[0-9]+/cancel/", r"repositories/.+/policies/[0-9]+/run/",
    r"login/", r"logout/", r"admin/login/", r"admin/logout/",
    r"console/read-only/",                           # the console's switch
    # A directory sync locks leavers out: it changes accounts, not the registry's content.
    r"api/v0/directory/syncs", r"console/directory-syncs/",
    r"tokens/[0-9]+/revoke/", r"settings/sign-ins/[^/]+/[^/]+/end/",
]))
# Of the allowed API token routes, only DELETE (revocation) goes on.
REVOCATIONS = re.compile(r"api/v0/(tokens|refreshTokens)/[0-9]+")


def allowed(method: str, path: str) -> bool:
    if method in SAFE_METHODS or path.startswith(PROTOCOL_PREFIXES) or path == "/v2":
        return True
    path = path.lstrip("/")
    if not ALLOWED_WRITES.fullmatch(path):
        return False
    return method == "DELETE" or not REVOCATIONS.fullmatch(path)


def refusal(request):
    if request.path_info.startswith("/api/"):
        response = JsonResponse({"detail": f"{readonly.MESSAGE[0].upper()}{readonly.MESSAGE[1:]}: "
                                           "changes are refused until it ends; reads work."}, status=503)
        response["Retry-After"] = "60"
        return response
    return render(request, "read_only.html", status=503)


class ReadOnlyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not allowed(request.method, request.path_info) and readonly.is_read_only():
            return refusal(request)
        return self.get_response(request)


def read_only_context(request):
    """`read_only` for every page's banner."""
    return {"read_only": readonly.is_read_only()}
