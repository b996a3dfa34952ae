"""Limits on failed sign-ins, at every entry point that checks a secret (the web sign-in,
the token service, Basic credentials on the REST API and /metrics, bearer tokens).

Three counters, each a fixed window of AUTH_THROTTLE_WINDOW seconds:
- an account from one address (AUTH_THROTTLE_ACCOUNT_ADDRESS failures): guessing one
  password from one place stops quickly;
- an address, whatever the account (AUTH_THROTTLE_ADDRESS): spraying from one place;
- an account, whatever the address (AUTH_THROTTLE_ACCOUNT): guessing from many places.
  This one blocks only addresses the account has not signed in from successfully in the
  last KNOWN_DAYS, so an attacker cannot lock the owner out from where they work.
A blocked key answers 429 with Retry-After for AUTH_THROTTLE_BLOCK seconds, before the
secret is even looked at: the right password does not get through a block either (else
the block would be an oracle).

The counters live in the database, so every web process of every host shares them.
"""

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import AuthThrottle

KNOWN_DAYS = 30


class Throttled(Exception):
    def __init__(self, retry_after: int, reason: str):
        self.retry_after, self.reason = max(1, retry_after), reason
        super().__init__(f"too many failed sign-ins {reason}; try again in {self.retry_after} s")


@dataclass(frozen=True)
class _Key:
    key: str
    limit: int
    reason: str


def _keys(account: str, address: str | None) -> list[_Key]:
    account = (account or "").lower()[:150]
    keys = []
    if address:
        keys.append(_Key(f"a:{address}", settings.AUTH_THROTTLE_ADDRESS, "from this address"))
    if account and address:
        keys.append(_Key(f"ua:{account}|{address}", settings.AUTH_THROTTLE_ACCOUNT_ADDRESS,
                         "for this account from this address"))
    if account:
        keys.append(_Key(f"u:{account}", settings.AUTH_THROTTLE_ACCOUNT, "for this account"))
    return keys


class Attempt:
    """One sign-in attempt: its keys and the rows they had when it was checked."""

    def __init__(self, account: str, address: str | None):
        self.account = (account or "").lower()[:150]
        self.address = address
        self.keys = {k.key: k for k in _keys(account, address)}
        self.known_key = f"ok:{self.account}|{address}" if self.account and address else None
        self.rows = {}


def check(account: str, address: str | None) -> Attempt:
    """Raise Throttled if a sign-in as `account` from `address` is blocked now (one
    query); else return the attempt, to report its outcome with."""
    attempt = Attempt(account, address)
    if not settings.AUTH_THROTTLE_ENABLED:
        return attempt
    now = timezone.now()
    wanted = [*attempt.keys, *([attempt.known_key] if attempt.known_key else [])]
    attempt.rows = {row.key: row for row in AuthThrottle.objects.filter(key__in=wanted)}
    known = attempt.known_key in attempt.rows and \
        attempt.rows[attempt.known_key].window_start > now - timedelta(days=KNOWN_DAYS)
    for key, k in attempt.keys.items():
        row = attempt.rows.get(key)
        if row is None or row.blocked_until is None or row.blocked_until <= now:
            continue
        if key.startswith("u:") and known:
            continue
        raise Throttled(int((row.blocked_until - now).total_seconds()) + 1, k.reason)
    return attempt


def failed(attempt: Attempt) -> None:
    """Count a failure against every key of this attempt; block those over their limit."""
    if not settings.AUTH_THROTTLE_ENABLED:
        return
    now = timezone.now()
    window_start = now - timedelta(seconds=settings.AUTH_THROTTLE_WINDOW)
    block = now + timedelta(seconds=settings.AUTH_THROTTLE_BLOCK)
    for k in attempt.keys.values():
        with transaction.atomic():
            row = AuthThrottle.objects.select_for_update().filter(key=k.key).first()
            if row is None:
                try:
                    with transaction.atomic():
                        AuthThrottle.objects.create(key=k.key, failures=1, window_start=now,
                                                    blocked_until=block if k.limit <= 1 else None)
                    continue
                except IntegrityError:  # counted by a concurrent failure
                    row = AuthThrottle.objects.select_for_update().get(key=k.key)
            if row.window_start < window_start and (row.blocked_until is None or row.blocked_until <= now):
                row.failures, row.window_start, row.blocked_until = 1, now, None
            else:
                row.failures = F("failures") + 1
            row.save()
            row.refresh_from_db(fields=["failures"])
            if row.failures >= k.limit and (row.blocked_until is None or row.blocked_until < block):
                AuthThrottle.objects.filter(key=k.key).update(blocked_until=block)


def succeeded(attempt: Attempt) -> None:
    """A right secret from here: forget this address's failures for the account and
    remember the address as one the account uses (written at most hourly: a pull asks
    the token service every time)."""
    if not settings.AUTH_THROTTLE_ENABLED or attempt.known_key is None:
        return
    account_address = f"ua:{attempt.account}|{attempt.address}"
    if account_address in attempt.rows:
        AuthThrottle.objects.filter(key=account_address).delete()
    known = attempt.rows.get(attempt.known_key)
    now = timezone.now()
    if known is None or known.window_start < now - timedelta(hours=1):
        AuthThrottle.objects.update_or_create(key=attempt.known_key, defaults={"window_start": now, "failures": 0})


def expired(now):
    """Counters whose window and block are over, and addresses an account has not used for
    KNOWN_DAYS (msr/retention.py deletes them)."""
    over = now - timedelta(seconds=max(settings.AUTH_THROTTLE_WINDOW, settings.AUTH_THROTTLE_BLOCK))
    done = Q(window_start__lt=over) & (Q(blocked_until__isnull=True) | Q(blocked_until__lt=now))
    unused = Q(key__startswith="ok:", window_start__lt=now - timedelta(days=KNOWN_DAYS))
    return AuthThrottle.objects.filter((~Q(key__startswith="ok:") & done) | unused)
