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
from contextlib import ExitStack, contextmanager
from pathlib import Path

from django.conf import settings

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
    from msr.leases import LeaseTaken, lease

    with ExitStack() as stack:
        try:
            held = stack.enter_context(lease(LEASE_NAME, LEASE_SECONDS, RENEW_SECONDS))
        except LeaseTaken:
            raise _busy(what, "held by another process or host: database lease 'maintenance'") from None
        yield
        if held.lost.is_set():
            log.error("the maintenance lease was lost while %s ran (a renewal came too late)", what)
