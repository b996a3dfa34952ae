"""Structured logs and the request id.

Every log line is one JSON object (`MSR_LOG_FORMAT=json`) or one line of text (`text`),
with the id of the request being served when there is one. Unset (or `auto`), the format
is text when stderr is a terminal (a person reading) and JSON otherwise (a collector). The id is the
client's `X-Request-ID` when it is a sane token, else a new one; it is returned in the
response header and carried by a layer redirect to the cache node (`rid` in the URL: the
client follows the redirect itself and sends no header of ours), so one id ties MSR's
lines to the cache's lines for the same pull.

Nothing here imports Django: gunicorn's master formats its own lines with these
formatters (msr/gunicorn_config.py).
"""

import contextvars
import json
import logging
import os
import re
from datetime import datetime, timezone

REQUEST_ID_HEADER = "X-Request-ID"
# A token of this shape passes through; anything else (too long, spaces, quotes) is
# replaced, so a client cannot write arbitrary text into the logs.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

# The request this thread is serving: {"request_id": ..., "user": ...}, or None.
_current = contextvars.ContextVar("msr_request", default=None)

access_log = logging.getLogger("msr.access")


def request_id_from(value: str | None) -> str:
    if value and _VALID_REQUEST_ID.fullmatch(value):
        return value
    return os.urandom(16).hex()


def begin(request_id: str) -> contextvars.Token:
    return _current.set({"request_id": request_id, "user": ""})


def end(token: contextvars.Token) -> None:
    _current.reset(token)


def current_request_id() -> str:
    context = _current.get()
    return context["request_id"] if context else ""


def set_user(username: str) -> None:
    """Name the user of the current request, for its access log line."""
    context = _current.get()
    if context is not None:
        context["user"] = username


def current_user() -> str:
    context = _current.get()
    return context["user"] if context else ""


# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}
_JSON_SCALARS = (str, int, float, bool, type(None))


def _extra_fields(record: logging.LogRecord) -> dict:
    """The record's `extra=` fields that are plain values. Objects are left out: Django
    puts the request on its records, whose repr holds the query string (a cache's grant)."""
    return {key: value for key, value in vars(record).items()
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_") and isinstance(value, _JSON_SCALARS)}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, then the
    record's extra fields (method, route, status, duration_ms, user, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id:
            entry["request_id"] = request_id
        entry.update(_extra_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`<time> <level> <logger> <message> [key=value ...]`, for a person at a terminal."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {"request_id": current_request_id(), **_extra_fields(record)}
        suffix = " ".join(f"{key}={value}" for key, value in fields.items() if value not in ("", None))
        if not suffix:
            return line
        first, newline, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{first} {suffix}{newline}{rest}"


FORMATTERS = {"json": JsonFormatter, "text": TextFormatter}


def resolve_format(value: str | None) -> str:
    """The log format for MSR_LOG_FORMAT=`value`: `json` and `text` as asked; unset, empty
    or `auto`: text when stderr (file descriptor 2, whatever sys.stderr became) is a
    terminal, else JSON. Anything else is returned as is, for the caller to refuse."""
    value = (value or "").strip().lower()
    if value in ("", "auto"):
        try:
            return "text" if os.isatty(2) else "json"
        except OSError:
            return "json"
    return value


# At a terminal these repeat every few seconds (beat's schedule, each periodic task's
# "received" and "succeeded"), burying what a person started MSR to read. Their failures
# are warnings and errors, which still show; MSR_LOG_LEVEL=DEBUG shows everything.
_CHATTY_AT_A_TERMINAL = ("celery.beat", "celery.worker.strategy", "celery.app.trace")


def logging_config(log_format: str, level: str) -> dict:
    """The dictConfig of MSR's processes: one handler on stderr, in `log_format`."""
    loggers = {"django.request": {"level": "ERROR"}}
    if log_format == "text" and level.upper() != "DEBUG":
        loggers.update({name: {"level": "WARNING"} for name in _CHATTY_AT_A_TERMINAL})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"msr": {"()": FORMATTERS[log_format]}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "msr",
                                 "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": loggers,
    }


def log_access(method: str, route: str, status: int, seconds: float, user: str) -> None:
    """The access line of one request (MSR_ACCESS_LOG). The route is the URL pattern,
    never the path with its query string: grants travel in query strings."""
    access_log.info("%s %s %s", method, route, status, extra={
        "method": method, "route": route, "status": status, "duration_ms": round(seconds * 1000, 2),
        "user": user})
