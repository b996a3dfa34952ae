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


# Each check runs in a daemon thread of its own so that one that hangs (a database or
# bucket that stopped answering without closing the connection) costs the probe
# CHECK_DEADLINE_SECONDS, not the client libraries' own timeouts (minutes). A hung check
# keeps its thread until its call returns; at most CHECK_THREADS such threads exist, and
# with every slot taken new checks read as "no answer" too: still "not ready", which is
# the truth. Daemon threads, not a pool: Python joins a pool's threads at exit, so a hung
# check would hold a web process's graceful stop until it is killed.
CHECK_DEADLINE_SECONDS = 3
CHECK_THREADS = 6
_slots = threading.BoundedSemaphore(CHECK_THREADS)


class _Pending:
    def __init__(self, check):
        self.done, self.error = threading.Event(), None
        threading.Thread(target=self._run, args=(check,), name="readyz", daemon=True).start()

    def _run(self, check) -> None:
        try:
            check()
        except Exception as e:
            self.error = e
        finally:
            connection.close()  # this thread's own connection (Django's are per thread)
            _slots.release()
            self.done.set()


def _start(check, deadline: float) -> _Pending | None:
    """The check under way, or None when no slot freed up before the deadline."""
    if not _slots.acquire(timeout=max(0.0, deadline - time.perf_counter())):
        return None
    try:
        return _Pending(check)
    except BaseException:  # no thread could be started
        _slots.release()
        raise


def readyz(request):
    results, failing = {}, []
    started = time.perf_counter()
    deadline = started + CHECK_DEADLINE_SECONDS
    pending = {name: _start(check, deadline) for name, check in CHECKS.items()}
    for name, check in pending.items():
        if check is None or not check.done.wait(max(0.0, deadline - time.perf_counter())):
            failing.append(name)
            results[name] = {"ok": False, "error": f"no answer within {CHECK_DEADLINE_SECONDS} s"}
        elif check.error is not None:
            failing.append(name)
            results[name] = {"ok": False, "error": _error(check.error)}
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
