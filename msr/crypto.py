"""Encryption at rest for secrets MSR must be able to read back (webhook HMAC keys,
remote registry passwords): Fernet (AES-128-CBC + HMAC-SHA256) from `cryptography`.

The key comes from MSR_ENCRYPTION_KEY (or _FILE), else it is generated into the data
dir; every process of a deployment must use the same key.
"""

from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from msr.keys import create_once


@cache
def _fernet() -> MultiFernet:
    keys = settings.ENCRYPTION_KEYS or [
        create_once(settings.DATA_DIR / "encryption_key", Fernet.generate_key).decode()
    ]
    # The first key encrypts; all decrypt, so keys can be rotated.
    return MultiFernet([Fernet(key.encode()) for key in keys])


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode() if plaintext else ""


def decrypt(ciphertext: str) -> str:
    return _with_keys("decrypt", ciphertext, "cannot decrypt a stored secret: was MSR_ENCRYPTION_KEY changed?")


def rotate(ciphertext: str) -> str:
    """The secret encrypted with the first (newest) key; ValueError if no key reads it."""
    return _with_keys("rotate", ciphertext, "cannot decrypt a stored secret with any of MSR_ENCRYPTION_KEY's keys")


def _with_keys(operation: str, ciphertext: str, failure: str) -> str:
    """MultiFernet's `decrypt` or `rotate` of a stored secret ("" stays ""); ValueError
    with `failure` where no key reads it."""
    if not ciphertext:
        return ""
    try:
        return getattr(_fernet(), operation)(ciphertext.encode()).decode()
    except InvalidToken:
        raise ValueError(failure) from None


def encrypted_fields() -> list[tuple[str, str]]:
    """Every model field holding a secret encrypted with these keys: (app label.model,
    field); the core's own, then those the apps registered (msr/extensions.py)."""
    from msr import extensions

    return [("msr.Webhook", "secret_encrypted"), ("accounts.User", "sso_refresh_token"),
            *extensions.encrypted_fields]
