"""MSR's logging: the dictConfig of its processes, the access line, and the user of the
request being served (for that line).

The line formats and the request id are the protocol's (protocol/logformat.py,
protocol/requestids.py), shared with the cache node: the id is returned in the response
header and carried by a layer redirect to the cache node (`rid` in the URL: the client
follows the redirect itself and sends no header of ours), so one id ties MSR's lines to
the cache's lines for the same pull.

Nothing here imports Django: msr/project/settings.py builds LOGGING with it.
"""

import logging

from protocol.logformat import FORMATTERS

access_log = logging.getLogger("msr.access")



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
