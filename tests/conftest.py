"""Shared fixtures.

The test database is created once per session (PostgreSQL when DATABASE_URL points at
it, else SQLite in a temporary data dir) and data is committed for real, because real
MSR processes read it. Tests therefore use unique repository names (`unique`).

Personas, in the organization `acme`:
    admin  system admin
    alice  owner of acme
    bob    member of team `readers`  (read-only on acme/public-app and acme/private-app)
    wanda  member of team `writers`  (read-write on both)
    adam   member of team `admins`   (admin on both)
    mel    member of acme without any team grant
    carol  outsider: not a member of acme
Each persona has a personal access token (`personas[name].token`) and the password
`<name>-password`.
"""

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from tests.client import Registry
from tests.processes import database_url, start_msr

# The brokers of the suite's workers (webhooks 11, security 10, mirroring and backup 12-15,
# the image test 9) are databases of a redis-server of this run's own, on a free port:
# two runs on one machine (two checkouts, a CI run beside a developer's) would otherwise
# share 127.0.0.1:6379's databases, and one run's workers take the other's jobs.
# MSR_TEST_REDIS_URL / MSR_SECURITY_REDIS_URL / MSR_IMAGE_TEST_REDIS_URL still win.
REDIS_URL_VARIABLES = {"MSR_TEST_REDIS_URL": 11, "MSR_SECURITY_REDIS_URL": 10, "MSR_IMAGE_TEST_REDIS_URL": 9}
_redis_server = None


def pytest_configure(config):
    global _redis_server
    if all(name in os.environ for name in REDIS_URL_VARIABLES) or not shutil.which("redis-server"):
        return  # told where, or no redis-server: the machine's Redis on 6379 as before
    from tests.fixtures.redis import RedisServer

    _redis_server = RedisServer(Path(tempfile.mkdtemp(prefix="msr-test-redis-")))
    _redis_server.start()
    for name, db in REDIS_URL_VARIABLES.items():
        os.environ.setdefault(name, f"redis://127.0.0.1:{_redis_server.port}/{db}")


def pytest_unconfigure(config):
    if _redis_server is not None:
        _redis_server.stop()
        shutil.rmtree(_redis_server.log_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def django_db_setup(django_test_environment, django_db_blocker):
    """Create the test database for every session: the tests use it through real
    processes, not through pytest-django's per-test markers."""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    yield
    with django_db_blocker.unblock():
        _end_other_sessions()
        teardown_databases(config, verbosity=0)


def _end_other_sessions():
    """Stopped MSR processes may leave their PostgreSQL sessions ending a moment after
    they exit; dropping the test database would then fail. End any that remain."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    connection.close()


@pytest.fixture(scope="session")
def committed_db(django_db_setup, django_db_blocker):
    """Every test outside tests/unit/ may use the (committed, shared) database
    (pytest_collection_modifyitems below asks for it)."""
    with django_db_blocker.unblock():
        yield


# -- tiers -------------------------------------------------------------------------------
#
# `integration`: the test starts real processes (MSR, cache nodes, deployments, daemons,
# registry clients, a browser, the S3 emulator). Everything else is the fast tier,
# `pytest -m "not integration"`, which runs in-process and never starts a process.

UNIT_TESTS = Path(__file__).parent / "unit"
# Fixtures that start processes, directly or through the fixtures they use.
PROCESS_FIXTURES = frozenset({
    "msr", "db_url", "artifacts_dir", "s3_emulator", "dockerd", "containerd",
    "registry", "nodes", "browser", "msr_on_redis", "slapd", "glewlwyd", "glewlwyd_https",
})
# Modules whose tests start processes in their bodies (Deployment(...), `msr up`,
# docker-compose, skopeo, a built image) rather than through a fixture.
PROCESS_MODULES = frozenset({"test_docker.py", "test_embedded.py", "test_hardening.py", "test_image.py",
                             "test_region.py", "test_s3.py"})


def _starts_processes(item) -> bool:
    path = Path(item.path)
    if UNIT_TESTS in path.parents:
        return False
    if path.name in PROCESS_MODULES or PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("make_store") == "s3"  # the S3 emulator


def pytest_collection_modifyitems(items):
    for item in items:
        # The committed, shared database, first of all fixtures, for every test but the
        # fast tier's (tests/unit/): those that need a database ask pytest-django for
        # one (`db`, rolled back), and those that need none do not wait for its creation.
        if UNIT_TESTS not in Path(item.path).parents and "committed_db" not in item.fixturenames:
            item.fixturenames.insert(0, "committed_db")
        if _starts_processes(item):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_process(request, monkeypatch):
    """A test outside the integration tier that starts a process fails, so that a test
    the rules above miss is found and marked rather than slowing the fast tier down."""
    if request.node.get_closest_marker("integration") or request.node.get_closest_marker("fresh_interpreter"):
        return
    import subprocess

    def refuse(self, args, *rest, **kwargs):
        raise AssertionError(f"a fast test started a process ({args!r}): mark it integration "
                             "(tests/conftest.py PROCESS_FIXTURES or PROCESS_MODULES)")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(scope="session")
def db_url(committed_db) -> str:
    from django.db import connection

    return database_url(connection.settings_dict)


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def s3_emulator(artifacts_dir):
    """moto's S3 emulator on 127.0.0.1 (tests/s3.py), one for the session; each user
    makes its own bucket."""
    from tests.s3 import S3Emulator

    emulator = S3Emulator(artifacts_dir / "logs")
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def msr(db_url, artifacts_dir):
    """A real `msr serve` (gunicorn, 2 workers) on the test database and data dir."""
    process, url = start_msr("serve", settings.DATA_DIR, db_url, artifacts_dir / "logs")
    yield url
    process.stop()


@dataclass
class Persona:
    name: str
    password: str
    token: str | None
    user: object


PERSONA_NAMES = ["admin", "alice", "bob", "wanda", "adam", "mel", "carol"]


@pytest.fixture(scope="session")
def personas(committed_db) -> dict[str, Persona]:
    from accounts.models import AccessToken, User
    from accounts.services import add_member, add_team_member, create_organization, create_team, create_user, set_team_access
    from msr.models import Repository

    result = {}
    for name in PERSONA_NAMES:
        user = User.objects.filter(username=name).first() or create_user(
            name, f"{name}-password", is_admin=(name == "admin"))
        _, secret = AccessToken.issue(user, AccessToken.PERSONAL, "tests")
        result[name] = Persona(name, f"{name}-password", secret, user)
    from accounts.models import Namespace

    acme = Namespace.objects.filter(name="acme").first() or create_organization(
        "acme", owner=result["alice"].user)
    add_member(acme, result["mel"].user)
    repositories = [
        Repository.objects.get_or_create(namespace=acme, name="public-app", defaults={"visibility": "public"})[0],
        Repository.objects.get_or_create(namespace=acme, name="private-app")[0],
    ]
    for team_name, member, level in [("readers", "bob", "read-only"), ("writers", "wanda", "read-write"),
                                     ("admins", "adam", "admin")]:
        team = acme.teams.filter(name=team_name).first() or create_team(acme, team_name)
        add_team_member(team, result[member].user)
        for repository in repositories:
            set_team_access(team, repository, level)
    return result


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def registry(msr):
    """Make a client for a persona (by name) or anonymous (None)."""
    def make(persona=None, personas_map=None):
        if persona is None:
            return Registry(msr)
        return Registry(msr, persona.name, persona.token)
    return make


def pytest_terminal_summary(terminalreporter):
    from tests.fixtures.ui import SCREENSHOTS

    if SCREENSHOTS.exists() and any(SCREENSHOTS.iterdir()):
        terminalreporter.write_line(f"UI screenshots: {SCREENSHOTS}")


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory):
    """A private dockerd for the session (tests/dockerd.py), stopped by pid at the end."""
    from tests.dockerd import start_dockerd

    daemon = start_dockerd(tmp_path_factory.mktemp("dockerd"))
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def containerd(tmp_path_factory):
    """A private containerd for the session (tests/dockerd.py), driven with `ctr`."""
    from tests.dockerd import start_containerd

    daemon = start_containerd(tmp_path_factory.mktemp("containerd"))
    yield daemon
    daemon.stop()


@pytest.fixture
def new_node():
    """Make in-process cache nodes (caches.node.CacheNode) from a Config; their background
    threads end with the test, instead of calling a stopped upstream for the rest of the run."""
    from caches.node import CacheNode

    made = []

    def make(config):
        made.append(CacheNode(config))
        return made[-1]

    yield make
    for node in made:
        node.stop()
