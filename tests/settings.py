"""Settings for the test process. MSR server processes started by the tests use the
production settings (msr.project.settings) with the same data dir and database."""

import os
import tempfile

os.environ.setdefault("MSR_DATA_DIR", tempfile.mkdtemp(prefix="msr-test-"))
# The suite's MSR (and this process, which runs tasks such as health checks in-process)
# talks to cache nodes, webhook receivers and other deployments on loopback, which the
# egress policy refuses by default; tests/security starts deployments without this.
os.environ.setdefault("MSR_OUTBOUND_ALLOW", "127.0.0.1/32")
# Every test client is 127.0.0.1, and the suite refuses credentials on purpose now and then:
# the per-address limit of failed sign-ins (100 per 15 minutes in production) is raised for
# the suite's servers; tests/security runs its own with the production value.
os.environ.setdefault("MSR_AUTH_THROTTLE_ADDRESS", "1000")
# Playwright's sync API keeps an event loop running in the test thread; the ORM calls the
# browser tests make are still synchronous (Django's documented escape hatch).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

from django.contrib.auth.hashers import PBKDF2PasswordHasher  # noqa: E402

from msr.project.settings import *  # noqa: E402,F401,F403
from msr.project.settings import DATA_DIR, DATABASES  # noqa: E402


class FastPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """Same algorithm name, so the servers verify these hashes; far fewer iterations,
    so creating the test personas takes milliseconds."""

    iterations = 1000


PASSWORD_HASHERS = ["tests.settings.FastPBKDF2PasswordHasher"]

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not pytest-django's in-memory default: the MSR processes open it too.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
