"""The REST API's exception handler: errors of the registry core (msr/exceptions.py)
answer in DRF's own format, `{"detail": "<message>"}`, with the status their kind
means; everything else is DRF's default handling."""

from rest_framework.exceptions import APIException
from rest_framework.views import exception_handler as drf_exception_handler

from msr import exceptions

# Most specific first: the first kind the error is an instance of decides.
STATUS_BY_KIND: list[tuple[type[exceptions.DomainError], int, str]] = [
    (exceptions.NotFound, 404, "not_found"),
    (exceptions.Invalid, 400, "invalid"),
    (exceptions.Conflict, 409, "conflict"),
    (exceptions.Refused, 403, "refused"),
    (exceptions.DomainError, 400, "invalid"),
]


def api_error(error: exceptions.DomainError) -> APIException:
    status, code = next((s, c) for kind, s, c in STATUS_BY_KIND if isinstance(error, kind))
    api = APIException(error.message, code)
    api.status_code = status
    return api


def exception_handler(exc, context):
    if isinstance(exc, exceptions.DomainError):
        exc = api_error(exc)
    return drf_exception_handler(exc, context)
