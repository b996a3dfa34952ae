"""Sign-in through the company directory (LDAP or Active Directory), with django-auth-ldap.

Loaded only when MSR_LDAP_URL is set (it is then in AUTHENTICATION_BACKENDS), so that
python-ldap, a C extension, is needed only where a directory is used.

The rules, on top of django-auth-ldap's bind-and-search:
- A name that belongs to a local user (source "local") is never looked up in the
  directory: the directory cannot take over MSR's own accounts (the install's admin).
- A user the directory signs in for the first time is created as a directory user
  (source "ldap") with the user's own namespace, like `create_user`; its password is
  checked by the directory only (User.set_password keeps the local hash unusable).
- When the directory cannot be reached, or refuses MSR's own bind, the sign-in raises
  DirectoryUnavailable instead of answering "wrong password", so that people are told
  what is wrong and the throttle does not count it against them.
"""

import logging

import ldap
from django.conf import settings
from django.core.exceptions import ValidationError
from django_auth_ldap.backend import LDAPBackend, _LDAPUser, ldap_error

from accounts.credentials import DirectoryUnavailable
from accounts.models import Namespace, User

log = logging.getLogger(__name__)

# Where django-auth-ldap reports an LDAPError that is not a wrong user password.
_SIGN_IN_CONTEXTS = {"authenticate", "search_for_user_dn"}


class DirectoryBackend(LDAPBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None or _is_local(username):
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)

    def get_or_build_user(self, username, ldap_user):
        names = ldap_user.attrs.get(settings.LDAP_ATTR_USERNAME) or [username]
        name = names[0].lower()
        user = User.objects.filter(username=name).first()
        if reason := why_no_account(name, user):
            raise _refused(reason)
        if user is not None:
            return user, False
        return User(username=name, source=User.DIRECTORY), True

    def authenticate_ldap_user(self, ldap_user, password):
        user = super().authenticate_ldap_user(ldap_user, password)
        if user is not None and not Namespace.objects.filter(user=user).exists():
            Namespace.objects.create(name=user.username, user=user, full_name=user.full_name)
        return user


def why_no_account(name: str, user: User | None) -> str | None:
    """Why the directory's `name` cannot be (or become) a directory user's account in MSR,
    `user` being the account of that name if any; None when it can. The sign-in and the
    team sync (accounts/directory_sync.py) follow the same rules."""
    if user is not None:
        return None if user.source == User.DIRECTORY else f"{name!r} is a local account"
    if Namespace.objects.filter(name=name).exists():
        return f"the name {name!r} is taken by an organization"
    try:
        Namespace._meta.get_field("name").run_validators(name)
    except ValidationError:
        return f"{name!r} is not a valid MSR user name (a namespace name)"
    return None


def describe(error: ldap.LDAPError) -> str:
    """libldap's reason for an LDAPError (never a password)."""
    reason = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
    return "; ".join(str(reason[k]) for k in ("desc", "info") if reason.get(k)) or type(error).__name__


def _refused(reason: str) -> Exception:
    """The directory accepted the password, but MSR cannot give this person an account."""
    log.warning("directory sign-in refused: %s", reason)
    return _LDAPUser.AuthenticationFailed(reason)


def _is_local(username: str) -> bool:
    return User.objects.filter(username=username.strip().lower()).exclude(source=User.DIRECTORY).exists()


def _uses_tls() -> bool:
    return settings.LDAP_URL.startswith("ldaps://") or settings.AUTH_LDAP_START_TLS


def _refuse_when_unreachable(sender, context, exception, **kwargs):
    """django-auth-ldap logs an LDAPError and answers "no such user"; raise instead, so
    that the sign-in says the directory is unavailable. The exception names libldap's
    reason (no connection, certificate not trusted, MSR's bind refused), never a password."""
    if context not in _SIGN_IN_CONTEXTS:
        return
    detail = describe(exception)
    if isinstance(exception, ldap.SERVER_DOWN) and _uses_tls():
        # libldap reports a certificate it does not trust as "Can't contact LDAP server".
        detail += " (or its TLS certificate is not trusted: check MSR_LDAP_CA_FILE and the host name in MSR_LDAP_URL)"
    log.warning("company directory unavailable: %s", detail)
    raise DirectoryUnavailable(detail)


ldap_error.connect(_refuse_when_unreachable, sender=DirectoryBackend)
