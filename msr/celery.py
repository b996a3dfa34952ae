"""The Celery application of MSR's workers (`msr worker`).

The broker is Redis (`MSR_BROKER_URL=redis://…`) in production; the embedded default
uses Kombu's filesystem transport in the data dir, so `msr up` needs no server.
Tasks take ids, reload their rows and are idempotent (see each task's docstring).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "msr.settings")

app = Celery("msr")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
