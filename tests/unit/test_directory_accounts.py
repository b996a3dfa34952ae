"""Directory accounts without a directory: what holds whatever the directory says
(the sign-ins themselves are in tests/test_directory_signin.py, against slapd)."""

from django.conf import settings

from accounts.models import User


def test_a_directory_users_password_never_becomes_a_local_one():
    user = User(username="dora", source=User.DIRECTORY)
    user.set_password("a-local-password-that-would-go-stale")
    assert not user.has_usable_password()
    assert not user.check_password("a-local-password-that-would-go-stale")


def test_a_local_users_password_is_still_msrs():
    user = User(username="lou")
    user.set_password("lou-local-password")
    assert user.check_password("lou-local-password")


def test_without_msr_ldap_url_the_directory_backend_is_not_loaded():
    assert settings.LDAP_URL == ""
    assert "accounts.directory.DirectoryBackend" not in settings.AUTHENTICATION_BACKENDS
