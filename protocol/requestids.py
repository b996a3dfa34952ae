"""Request ids: the id of the request being served, in every log line written while
serving it. It is the client's `X-Request-ID` when that is a sane token, else a new one.
MSR returns it in the response and carries it in a layer redirect (`rid`); the cache node
takes it from there (or from a child cache's header) and passes it upstream, so one id
ties MSR's lines to every cache's lines for one pull. Used by msr/project/wsgi.py, msr/project/logs.py,
caches/grants.py, caches/node.py and the log formatters (protocol/logformat.py)."""

import contextvars
import os
import re

HEADER = "X-Request-ID"
# A token of this shape passes through; anything else (too long, spaces, quotes) is
# replaced, so a client cannot write arbitrary text into the logs.
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

# The id of the request this thread serves ("" outside a request).
_current = contextvars.ContextVar("msr_request_id", default="")


def from_client(value: str | None) -> str:
    """`value` if it is a sane request id, else a new id."""
    if value and _VALID.fullmatch(value):
        return value
    return os.urandom(16).hex()


def current() -> str:
    return _current.get()


def begin(request_id: str) -> contextvars.Token:
    """Make `request_id` the current id; end(token) restores the previous one."""
    return _current.set(request_id)


def end(token: contextvars.Token) -> None:
    _current.reset(token)
