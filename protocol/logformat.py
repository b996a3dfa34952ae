"""Log line formats: one JSON object per line (`MSR_LOG_FORMAT=json`) or one line of text
(`text`), with the current request id (protocol/requestids.py) and the record's `extra=`
fields. Unset (or `auto`), text when stderr is a terminal (a person reading) and JSON
otherwise (a collector). Used by MSR's processes (msr/project/logs.py, msr/project/settings.py,
msr/project/gunicorn_config.py) and by the cache node (caches/node.py), so their lines read alike.
"""

import json
import logging
import os
from datetime import datetime, timezone

from protocol import requestids

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
        request_id = requestids.current()
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
        fields = {"request_id": requestids.current(), **_extra_fields(record)}
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
