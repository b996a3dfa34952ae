"""The Celery application of MSR's workers (`msr worker`).

The broker is Redis (`MSR_BROKER_URL=redis://…`) in production; the embedded default
uses Kombu's filesystem transport in the data dir, so `msr up` needs no server.
Tasks take ids, reload their rows and are idempotent (see each task's docstring).

Two settings of `msr up` for its own worker (environment, not documented for operators):
- MSR_WORKER_READY_FILE: a file the worker creates once it consumes tasks, so that `msr up`
  knows when to print its URLs (and when a restarted worker is back).
- MSR_WORKER_EMBEDDED=1: no "running the worker with superuser privileges" warning. MSR
  accepts JSON only (CELERY_ACCEPT_CONTENT: no pickle), so Celery does not refuse root;
  its warning is a screenful of text around the first lines a newcomer reads, typically
  in a container where root is the only user. `msr worker` on its own still warns.
"""

import os
import warnings
from pathlib import Path

from celery import Celery, signals
from celery.exceptions import SecurityWarning

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "msr.project.settings")

app = Celery("msr")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

if os.environ.get("MSR_WORKER_EMBEDDED") == "1":
    warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges",
                            category=SecurityWarning)


@signals.worker_ready.connect
def _announce_ready(**kwargs) -> None:
    path = os.environ.get("MSR_WORKER_READY_FILE")
    if path:
        Path(path).write_text(f"{os.getpid()}\n")
