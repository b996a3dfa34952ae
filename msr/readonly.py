"""Read-only mode: the whole registry refuses writes during maintenance while pulls,
cache redirects, the UI and garbage collection go on.

Two switches, either one turns it on:
- `MSR_READ_ONLY=true` in the environment (settings.READ_ONLY): read at start, so the API
  cannot turn it off (an operator's deploy-time decision outranks a click);
- the `SystemSettings` row, toggled by system admins (`PATCH /api/v0/meta/settings`,
  the console's button).

Every web process and worker reads the row at most once per READ_ONLY_CACHE_SECONDS and
keeps the answer in memory, so a change reaches every process within that time without a
query per request. Who asks: `msr/project/readonly_middleware.py` (requests) and
`mirroring/jobs.py` (jobs that write into this deployment wait).
"""

import logging
import threading
import time

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

log = logging.getLogger(__name__)

from msr.registry.errors import ReadOnly

MESSAGE = ReadOnly.message

_lock = threading.Lock()
_cached: tuple[bool, float] | None = None  # (runtime switch, monotonic time it was read)


class ReadOnlyLocked(Exception):
    """The environment holds read-only mode on; the runtime switch cannot lift it."""


def _runtime_switch() -> bool:
    from msr.models import SystemSettings

    return bool(SystemSettings.objects.filter(pk=1).values_list("read_only", flat=True).first())


def runtime_read_only() -> bool:
    """The database switch, as this process last read it (at most READ_ONLY_CACHE_SECONDS ago)."""
    global _cached
    now = time.monotonic()
    cached = _cached
    if cached is not None and now - cached[1] < settings.READ_ONLY_CACHE_SECONDS:
        return cached[0]
    with _lock:
        try:
            value = _runtime_switch()
        except DatabaseError:
            # The database is away: keep the last answer (writes fail anyway without it).
            log.warning("read-only mode: the settings row cannot be read; keeping the last answer")
            value = cached[0] if cached is not None else False
        _cached = (value, now)
    return value


def is_read_only() -> bool:
    return settings.READ_ONLY or runtime_read_only()


def forget() -> None:
    """Drop this process's cached answer (after a change, and between tests)."""
    global _cached
    _cached = None


def state() -> dict:
    """What `GET /api/v0/meta/settings` shows."""
    from msr.models import SystemSettings

    row = SystemSettings.objects.select_related("changed_by").filter(pk=1).first()
    runtime = bool(row and row.read_only)
    return {
        "readOnly": settings.READ_ONLY or runtime,
        "readOnlyFromEnvironment": settings.READ_ONLY,
        "readOnlyRuntime": runtime,
        "readOnlyChangedAt": row.changed_at if row else None,
        "readOnlyChangedBy": row.changed_by.username if row and row.changed_by else "",
        "cacheSeconds": settings.READ_ONLY_CACHE_SECONDS,
    }


def set_read_only(value: bool, user, request=None) -> bool:
    """Turn the runtime switch on or off for `user` (a system admin); records an audit
    event when it changes. Returns whether it changed. Raises ReadOnlyLocked when asked
    to leave read-only mode while MSR_READ_ONLY holds it on."""
    from msr.events import record
    from msr.models import Event, SystemSettings

    if not value and settings.READ_ONLY:
        raise ReadOnlyLocked("read-only mode is set by MSR_READ_ONLY=true in the environment; "
                             "unset it and restart MSR to leave read-only mode")
    with transaction.atomic():
        row, _ = SystemSettings.objects.select_for_update().get_or_create(pk=1)
        changed = row.read_only != value
        if changed:
            row.read_only, row.changed_at, row.changed_by = value, timezone.now(), user
            row.save()
            record(Event.SETTINGS, actor=user.username, request=request,
                   detail={"readOnly": value, "action": "entered read-only mode" if value else "left read-only mode"})
    forget()
    if changed:
        log.warning("read-only mode %s by %s", "entered" if value else "left", user.username)
    return changed
