"""Leases: named locks in the database, for work that processes on several hosts must not
do at once (an S3 upload's appends, maintenance). Taken by inserting the `StorageLease`
row (its primary key makes it exclusive), renewed by a thread while held, free again
`seconds` after the holder stopped renewing it (a process that died), released on exit.
"""

import secrets
import threading
from contextlib import contextmanager
from datetime import timedelta

from django.db import IntegrityError, connection, transaction
from django.utils import timezone


class LeaseTaken(Exception):
    """Another holder has the lease."""


class Lease:
    def __init__(self, name: str):
        self.name = name
        # Set when a renewal found the row gone or taken (the holder stalled past its
        # expiry and another took it): the holder must stop.
        self.lost = threading.Event()


@contextmanager
def lease(name: str, seconds: float, renew_every: float):
    from msr.models import StorageLease

    holder = secrets.token_hex(16)
    now = timezone.now()
    StorageLease.objects.filter(name=name, expires_at__lt=now).delete()
    try:
        with transaction.atomic():
            StorageLease.objects.create(name=name, holder=holder, expires_at=now + timedelta(seconds=seconds))
    except IntegrityError:
        raise LeaseTaken(name) from None
    held, stop = Lease(name), threading.Event()

    def renew():
        try:
            while not stop.wait(renew_every):
                if not StorageLease.objects.filter(name=name, holder=holder).update(
                        expires_at=timezone.now() + timedelta(seconds=seconds)):
                    held.lost.set()
                    return
        finally:
            connection.close()  # this thread's own connection

    renewer = threading.Thread(target=renew, name=f"lease-{name}", daemon=True)
    renewer.start()
    try:
        yield held
    finally:
        stop.set()
        renewer.join(timeout=10)
        StorageLease.objects.filter(name=name, holder=holder).delete()
