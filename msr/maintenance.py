"""One lock for the maintenance work that must not overlap: garbage collection, backup
and restore. A backup copies the blobs its database snapshot references after taking
the snapshot, so no GC may delete blobs in between; a restore rewrites everything.

The lock is a file lock on DATA_DIR/maintenance.lock: it serializes the processes of
one host sharing that data dir (the embedded default, or one worker host). With workers
on several hosts, run GC and backups on the same host or schedule them apart
(docs/operations.md).
"""

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings


class Busy(Exception):
    pass


@contextmanager
def maintenance_lock(what: str):
    """Hold the lock for `what`, or raise Busy at once if another holder has it."""
    path = Path(settings.DATA_DIR) / "maintenance.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise Busy(f"cannot {what}: garbage collection, a backup or a restore is running "
                       f"(lock {path}); try again when it has finished") from None
        yield
    finally:
        os.close(fd)
