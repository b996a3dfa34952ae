"""Probes for load balancers and orchestrators (no authentication, no UI middleware).

`/healthz`: liveness. The process answers; nothing else is asked, so a database outage
does not get every web process restarted.
`/readyz`: readiness. The database answers a query, the broker is reachable (Redis
PING, or the filesystem broker's folder writable), the blob storage is usable (a file
created and deleted; S3: HEAD on the bucket). The checks run in parallel and each has
CHECK_DEADLINE_SECONDS to answer. 200 when all pass, else 503 naming the failing checks.
Error messages are shown only to the addresses of MSR_METRICS_ALLOW.
"""

import logging
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from msr.project.metrics import address_allowed

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 2


def healthz(request):
    return JsonResponse({"status": "ok"})


def _writable(folder: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".readyz-") as probe:
        probe.write(b"ok")
        probe.flush()


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_broker() -> None:
    """The broker as the worker and the outbox use it: Celery's own connection, so its
    transport module is loaded (a missing dependency of Kombu's Redis transport fails here,
    not only in the worker) and a channel is opened (Redis: a PING on the transport's client)."""
    url = settings.CELERY_BROKER_URL
    if urlsplit(url).scheme == "filesystem":
        _writable(Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]))
        return
    from msr.project.celery import app

    with app.connection_for_write() as broker:
        broker.ensure_connection(max_retries=1, timeout=TIMEOUT_SECONDS)
        broker.default_channel  # noqa: B018  (opening the channel is the check)


def check_storage() -> None:
    from msr.storage import get_storage

    get_storage().check()  # filesystem: can write a file; S3: HEAD on the bucket


CHECKS = {"database": check_database, "broker": check_broker, "storage": check_storage}


def _error(e: Exception) -> str:
    message = f"{type(e).__name__}: {e}"[:300]
    password = urlsplit(settings.CELERY_BROKER_URL).password
    return message.replace(password, "***") if password else message


# Checks run in these threads so that one that hangs (a database or bucket that stopped
# answering without closing the connection) costs the probe CHECK_DEADLINE_SECONDS, not
# the client libraries' own timeouts (minutes). A hung check keeps its thread until its
# call returns; with every thread hung, new checks wait and time out too: still "not
# ready", which is the truth.
CHECK_DEADLINE_SECONDS = 3
_pool = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="readyz")
        return _pool


def _run(check) -> None:
    try:
        check()
    finally:
        connection.close()  # this thread's own connection (Django's are per thread)


def readyz(request):
    results, failing = {}, []
    started = time.perf_counter()
    futures = {name: _executor().submit(_run, check) for name, check in CHECKS.items()}
    deadline = started + CHECK_DEADLINE_SECONDS
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.0, deadline - time.perf_counter()))
        except FutureTimeout:
            failing.append(name)
            results[name] = {"ok": False, "error": f"no answer within {CHECK_DEADLINE_SECONDS} s"}
        except Exception as e:
            failing.append(name)
            results[name] = {"ok": False, "error": _error(e)}
        else:
            results[name] = {"ok": True}
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    if failing:
        log.warning("not ready: %s", ", ".join(f"{n} ({results[n]['error']})" for n in failing),
                    extra={"failing": ",".join(failing)})
        if not address_allowed(request, settings.METRICS_ALLOW):
            for result in results.values():
                result.pop("error", None)
    body = {"status": "unavailable" if failing else "ok", "failing": failing, "checks": results}
    response = JsonResponse(body, status=503 if failing else 200)
    response["Cache-Control"] = "no-store"
    response._has_been_logged = True  # the warning above says more than Django's "Service Unavailable"
    return response
