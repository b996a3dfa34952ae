"""Accounts of people who sign in through single sign-on (OpenID Connect).

msr/sso.py runs the protocol and hands over who the provider says signed in; this module
decides what that means for MSR's accounts:
- A person is the same account as long as the provider's issuer and subject (`sub`, which
  never changes) are the same: `User.external_id`. A name or an e-mail that changed at the
  provider never moves a sign-in to another account.
- A person new to MSR gets an account of source "oidc" with the user's own namespace (the
  rules of accounts.services.create_user). A name taken by any other account (a local user,
  a directory user, another provider's user) or by an organization is refused: single
  sign-on never takes over an account it did not create.
- Full name and e-mail are copied at each sign-in; the admin flag too when an admin group
  is configured. A deactivated account is refused.
"""

import logging
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from accounts.models import Namespace, User

log = logging.getLogger(__name__)


class SignInRefused(Exception):
    """The provider signed the person in, but MSR will not: the message is for the person."""


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in."""

    issuer: str
    subject: str
    username: str
    full_name: str = ""
    email: str = ""
    groups: frozenset[str] = field(default_factory=frozenset)

    @property
    def external_id(self) -> str:
        return f"{self.issuer} {self.subject}"


def _check_new_name(name: str) -> None:
    taken = User.objects.filter(username=name).first()
    if taken is not None:
        whose = {User.LOCAL: "a local MSR account", User.DIRECTORY: "a company directory account"}.get(
            taken.source, "another single sign-on account")
        raise SignInRefused(f"The user name {name!r} is already used by {whose}. Ask an MSR administrator "
                            "to rename one of the two accounts.")
    if Namespace.objects.filter(name=name).exists():
        raise SignInRefused(f"The user name {name!r} is already used by an organization in MSR. Ask an MSR "
                            "administrator for help.")
    try:
        Namespace._meta.get_field("name").run_validators(name)
    except ValidationError:
        raise SignInRefused(f"{name!r} cannot be an MSR user name (a namespace name: lowercase letters, "
                            "digits and single separators . _ __ - between them). Ask an MSR administrator "
                            "to check MSR_OIDC_CLAIM_USERNAME.") from None


@transaction.atomic
def _create(identity: Identity, is_admin: bool) -> User:
    _check_new_name(identity.username)
    try:
        with transaction.atomic():
            user = User(username=identity.username, source=User.SSO, external_id=identity.external_id,
                        full_name=identity.full_name, email=identity.email,
                        is_superuser=is_admin, is_staff=is_admin)
            user.set_unusable_password()
            user.save()
            Namespace.objects.create(name=user.username, user=user, full_name=user.full_name)
    except IntegrityError:  # the same name made a moment ago by another sign-in
        raise SignInRefused(f"The user name {identity.username!r} was just taken. Try again.") from None
    log.info("single sign-on: created the account %s for %s", user.username, identity.external_id)
    return user


def account_for(identity: Identity, admin_group: str = "") -> tuple[User, bool]:
    """(the account `identity` signs in to, whether it was created now). Raises
    SignInRefused. With `admin_group`, membership of that group decides the admin flag."""
    is_admin = bool(admin_group) and admin_group in identity.groups
    user = User.objects.filter(source=User.SSO, external_id=identity.external_id).first()
    if user is None:
        if not identity.username:
            raise SignInRefused("The provider did not say which user name to use (no user name or e-mail "
                                "claim). Ask an MSR administrator to check MSR_OIDC_CLAIM_USERNAME.")
        return _create(identity, is_admin), True
    if not user.is_active:
        raise SignInRefused("This MSR account is deactivated. Ask an MSR administrator.")
    user.full_name, user.email = identity.full_name, identity.email
    fields = ["full_name", "email"]
    if admin_group:
        user.is_superuser = user.is_staff = is_admin
        fields += ["is_superuser", "is_staff"]
    user.save(update_fields=fields)
    Namespace.objects.filter(user=user).update(full_name=user.full_name)
    return user, False
