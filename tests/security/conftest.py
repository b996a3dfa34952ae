"""A deployment as an operator runs it, attacked from outside: `msr serve` and a Celery
worker on Redis, with the default egress policy except for the two loopback ports of the
attacker's own servers (a registry that lies, a webhook receiver), which stand for
servers on the internet. Anything else on loopback stands for an internal service."""

import os
import time
import uuid
from dataclasses import dataclass

import pytest
import redis
import requests
from django.conf import settings

from tests.deployments import FAST_ENV
from tests.processes import MSR, Process, start_msr, stop_all
from tests.security.fakes import FakeRegistry, Listener

REDIS_URL = os.environ.get("MSR_SECURITY_REDIS_URL", "redis://127.0.0.1:6379/10")


@dataclass
class Guarded:
    url: str
    registry: FakeRegistry  # the attacker's registry (allowed: it stands for the internet)
    receiver: Listener  # the attacker's webhook receiver (allowed)
    logs: object

    def api(self, auth, method, path, **kwargs) -> requests.Response:
        return requests.request(method, f"{self.url}/api/v0/{path.lstrip('/')}", auth=auth, timeout=60, **kwargs)

    def wait_job(self, auth, job_id: int, timeout=60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.api(auth, "GET", f"jobs/{job_id}").json()
            if job["status"] not in ("waiting", "running") or time.monotonic() > deadline:
                return job
            time.sleep(0.2)

    def wait_delivery(self, auth, webhook_id: int, timeout=60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            deliveries = self.api(auth, "GET", f"webhooks/{webhook_id}/deliveries").json()["results"]
            if deliveries and deliveries[0]["status"] != "pending":
                return deliveries[0]
            assert time.monotonic() < deadline, deliveries
            time.sleep(0.2)


@pytest.fixture(scope="package")
def guarded(db_url, artifacts_dir, personas):
    registry, receiver = FakeRegistry(), Listener()
    redis.Redis.from_url(REDIS_URL).flushdb()
    from accounts.models import AuthThrottle

    AuthThrottle.objects.filter(key="a:127.0.0.1").delete()  # the suite's own address starts clean
    env = {**FAST_ENV, "MSR_BROKER_URL": REDIS_URL, "MSR_MIRROR_MAX_ATTEMPTS": "1", "MSR_AUTH_THROTTLE_ADDRESS": "100",
           "MSR_WEBHOOK_RETRY_BASE_SECONDS": "0.2", "MSR_WEBHOOK_MAX_ATTEMPTS": "2",
           "MSR_OUTBOUND_ALLOW": f"127.0.0.1:{registry.port},127.0.0.1:{receiver.port}"}
    logs = artifacts_dir / "logs" / "security"
    worker_env = {**os.environ, **env, "MSR_DATA_DIR": str(settings.DATA_DIR), "DATABASE_URL": db_url}
    worker_env = {k: v for k, v in worker_env.items() if not k.startswith("DJANGO_")}
    logs.mkdir(parents=True, exist_ok=True)
    # The worker starts while the web process does.
    worker = Process([MSR, "worker", "--concurrency", "2", "--pool", "threads"], worker_env, logs / "worker.log")
    web, url = start_msr("serve", settings.DATA_DIR, db_url, logs, extra_env=env)
    deadline = time.monotonic() + 60
    while " ready." not in worker.log():
        assert time.monotonic() < deadline and worker.popen.poll() is None, worker.log()
        time.sleep(0.2)
    yield Guarded(url, registry, receiver, logs)
    stop_all(worker, web)
    registry.server.shutdown()
    receiver.stop()


@pytest.fixture
def fake(guarded):
    guarded.registry.reset()
    yield guarded.registry
    guarded.registry.reset()


@dataclass
class Tenant:
    name: str
    password: str
    user: object

    @property
    def auth(self) -> tuple[str, str]:
        return (self.name, self.password)


@pytest.fixture
def tenant():
    """Make a fresh user (their own namespace; nobody else's rights): tenant("victim")."""
    from accounts.services import create_user

    def make(role: str) -> Tenant:
        name = f"{role}{uuid.uuid4().hex[:8]}"
        password = f"{name}-pass-phrase"
        return Tenant(name, password, create_user(name, password))
    return make


@pytest.fixture
def organization():
    """An organization owned by `owner` with one team per access level given:
    organization(owner, {"writers": ("read-write", [user, ...], [repo, ...])})."""
    from accounts.services import add_team_member, create_organization, create_team, set_team_access
    from msr.models import Repository

    def make(owner, teams=None, repositories=("app",), visibility="private"):
        org = create_organization(f"org{uuid.uuid4().hex[:8]}", owner=owner.user)
        repos = {name: Repository.objects.create(namespace=org, name=name, visibility=visibility)
                 for name in repositories}
        made = {}
        for team_name, (level, members, names) in (teams or {}).items():
            team = create_team(org, team_name)
            for member in members:
                add_team_member(team, member.user)
            for name in names:
                set_team_access(team, repos[name], level)
            made[team_name] = team
        return org, repos, made
    return make
