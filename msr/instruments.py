"""What the registry core tells the operator about its work as it does it: the counters it
increments (served at `/metrics` with the request figures, msr/project/metrics.py) and
the user of the request being served (named in its access line, msr/project/logs.py).

Counting is an in-memory write under prometheus_client's lock; under gunicorn's worker
processes the multiprocess mode adds them up at scrape time (msr/project/metrics.py).
"""

import contextvars

from prometheus_client import Counter

from protocol import requestids

PULLS = Counter("msr_pulls", "Pulls: manifest GETs answered 200")
PUSHES = Counter("msr_pushes", "Pushes: manifests stored by PUT")
CACHE_REDIRECTS = Counter("msr_cache_redirects", "Layer GETs redirected (307) to a content cache", ["cache"])
STORAGE_REDIRECTS = Counter("msr_storage_redirects", "Layer GETs redirected (307) to object storage (presigned URL)")
TOKENS_ISSUED = Counter("msr_tokens_issued", "Access tokens issued by the token service")


# The user of the request this thread is serving: {"user": ...}, or None. A dict, so that
# set_user reaches the request's context from wherever in the request it is called.
_current = contextvars.ContextVar("msr_request_user", default=None)


def begin(request_id: str) -> tuple[contextvars.Token, contextvars.Token]:
    """Start serving a request: its id in every line, its user for the access line."""
    return requestids.begin(request_id), _current.set({"user": ""})


def end(tokens: tuple[contextvars.Token, contextvars.Token]) -> None:
    request_id_token, user_token = tokens
    _current.reset(user_token)
    requestids.end(request_id_token)


def set_user(username: str) -> None:
    """Name the user of the current request, for its access log line."""
    context = _current.get()
    if context is not None:
        context["user"] = username


def current_user() -> str:
    context = _current.get()
    return context["user"] if context else ""
