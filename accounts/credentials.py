"""Checking a username and a password (or a personal access token) at login.

Passwords are stored with Django's slow hash (PBKDF2, about half a second here), which is
right for a login form but not for registry clients that log in again for every copy.
A successful check is remembered in this process for a few minutes, keyed by an HMAC of
the credentials (never the password itself) and tied to the stored hash: changing the
password, or deactivating the user, ends it at once. A directory user's password is not
remembered: only the directory knows when it changes (accounts/directory.py).
"""

import hashlib
import hmac
import threading
import time
from collections import OrderedDict

from django.conf import settings
from django.contrib.auth import authenticate
from django.utils import timezone

from accounts.models import AccessToken, User

REMEMBER_SECONDS = 300


class DirectoryUnavailable(Exception):
    """The company directory could not check a password (unreachable, its certificate not
    trusted, MSR's own bind refused); the argument says why, for the operator's log."""

    message = ("MSR cannot reach the company directory right now, so directory accounts cannot "
               "sign in with their password. Try again later; personal access tokens still work.")


class _RememberedLogins:
    def __init__(self, capacity=2048):
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity

    @staticmethod
    def key(username: str, password: str) -> bytes:
        message = f"{username}\0{password}".encode()
        return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).digest()

    def get(self, key: bytes) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key: bytes, password_hash: str) -> None:
        with self._lock:
            self._entries[key] = (password_hash, time.monotonic() + REMEMBER_SECONDS)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)


_remembered = _RememberedLogins()


def check_credentials(username: str, password: str) -> tuple[User, AccessToken | None] | None:
    """(the active user these credentials belong to, the personal access token used as
    the password or None for the password itself), or None. Callers go through
    msr.signin, which throttles and audits."""
    if password.startswith(AccessToken.PREFIXES[AccessToken.PERSONAL]):
        token = AccessToken.find(password, AccessToken.PERSONAL)
        if token is None or token.user.username != username:
            return None
        AccessToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user, token
    key = _remembered.key(username, password)
    remembered_hash = _remembered.get(key)
    if remembered_hash is not None:
        user = User.objects.filter(username=username, is_active=True).first()
        if user is not None and user.password == remembered_hash:
            return user, None
    user = authenticate(username=username, password=password)  # raises DirectoryUnavailable
    if user is None or not user.is_active:
        return None
    if user.source == User.DIRECTORY:
        if not user.backend.endswith(".DirectoryBackend"):
            return None  # only the directory checks a directory user's password
        return user, None
    _remembered.put(key, user.password)
    return user, None
