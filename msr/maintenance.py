"""One lock for the maintenance work that must not overlap: garbage collection, backup
and restore. A backup copies the blobs its database snapshot references after taking
the snapshot, so no GC may delete blobs in between; a restore rewrites everything.

Two locks, taken in this order:
- a file lock on DATA_DIR/maintenance.lock, for the processes of one host (and for a
  restore, which replaces the database itself);
- a lease row in the database (`StorageLease` "maintenance"), for GC and backups run on
  different hosts (a worker on one, a cron job on another). Its holder renews it every
  RENEW_SECONDS while the work runs; a holder that died frees it after LEASE_SECONDS.
"""

import fcntl
import logging
import os
import secrets
import threading
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

log = logging.getLogger(__name__)

LEASE_NAME = "maintenance"
LEASE_SECONDS = 120
RENEW_SECONDS = 30


class Busy(Exception):
    pass


def _busy(what: str, where: str) -> Busy:
    return Busy(f"cannot {what}: garbage collection, a backup or a restore is running "
                f"({where}); try again when it has finished")


@contextmanager
def maintenance_lock(what: str, database: bool = True):
    """Hold the lock for `what`, or raise Busy at once if another holder has it.
    `database=False` (restore): the file lock only, as the database is being replaced."""
    path = Path(settings.DATA_DIR) / "maintenance.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise _busy(what, f"lock {path}") from None
        if database:
            with _lease(what):
                yield
        else:
            yield
    finally:
        os.close(fd)


@contextmanager
def _lease(what: str):
    from msr.models import StorageLease

    holder = secrets.token_hex(16)
    now = timezone.now()
    StorageLease.objects.filter(name=LEASE_NAME, expires_at__lt=now).delete()
    try:
        with transaction.atomic():
            StorageLease.objects.create(name=LEASE_NAME, holder=holder,
                                        expires_at=now + timedelta(seconds=LEASE_SECONDS))
    except IntegrityError:
        raise _busy(what, "held by another process or host: database lease 'maintenance'") from None
    stop = threading.Event()

    def renew():
        try:
            while not stop.wait(RENEW_SECONDS):
                kept = StorageLease.objects.filter(name=LEASE_NAME, holder=holder).update(
                    expires_at=timezone.now() + timedelta(seconds=LEASE_SECONDS))
                if not kept:
                    log.error("the maintenance lease was lost while %s ran (its renewal came too late)", what)
                    return
        finally:
            connection.close()

    renewer = threading.Thread(target=renew, name="maintenance-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=10)
        StorageLease.objects.filter(name=LEASE_NAME, holder=holder).delete()
