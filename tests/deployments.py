"""Whole MSR deployments for the mirroring tests: each with its own database (a
PostgreSQL database of its own when the suite runs on PostgreSQL, else an SQLite file),
data dir (storage), port, Redis database (broker) and Celery worker (with beat)."""

import os
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

from tests.processes import MSR, Process, free_port, side_by_side, stop_all

FAST_ENV = {
    # Mirroring's clocks, short enough for a test and otherwise the production code path.
    "MSR_MIRROR_TICK_SECONDS": "1",
    "MSR_MIRROR_HEARTBEAT_SECONDS": "0.5",
    "MSR_MIRROR_STALE_SECONDS": "4",
    "MSR_MIRROR_RETRY_BASE_SECONDS": "0.5",
    "MSR_WEB_WORKERS": "2",
}


def _admin_url(db_url: str) -> str:
    parts = urlsplit(db_url)
    return parts._replace(path="/postgres").geturl()


class Deployment:
    def __init__(self, name: str, root: Path, suite_db_url: str, redis_url: str, extra_env=None):
        self.name, self.root = name, root
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs = root / "logs"
        self.logs.mkdir(exist_ok=True)
        if suite_db_url.startswith("postgres"):
            self.pg_name = f"{urlsplit(suite_db_url).path.lstrip('/')}_{name}"
            self.db_url = urlsplit(suite_db_url)._replace(path=f"/{self.pg_name}").geturl()
            self._admin_db = _admin_url(suite_db_url)
            self._pg("DROP DATABASE IF EXISTS {0} WITH (FORCE)", "CREATE DATABASE {0}")
        else:
            self.pg_name = None
            self.db_url = f"sqlite:///{self.data_dir / 'msr.sqlite3'}"
        self.redis_url = redis_url
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MSR_", "DATABASE_URL"))}
        self.env.update(FAST_ENV)
        # Deployments mirror to each other on loopback, which the egress policy opens only
        # when told to (tests/security runs deployments without it).
        self.env.update({"MSR_DATA_DIR": str(self.data_dir), "DATABASE_URL": self.db_url,
                         "MSR_BROKER_URL": redis_url, "MSR_OUTBOUND_ALLOW": "127.0.0.1/32", **(extra_env or {})})
        self.web = self.worker = None
        self.url = ""

    def _pg(self, *statements):
        import psycopg2

        connection = psycopg2.connect(self._admin_db)
        connection.autocommit = True
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement.format(self.pg_name))
        connection.close()

    def manage(self, *args, timeout=300) -> subprocess.CompletedProcess:
        result = subprocess.run([MSR, "manage", *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        assert result.returncode == 0, f"{self.name}: msr manage {args}:\n{result.stdout}\n{result.stderr}"
        return result

    def with_admin(self, organization: str, setup: str = "") -> str:
        """Migrate, create `admin` (password admin-password) owning `organization`, run the
        Python `setup`; return a personal access token of admin's. One process for all:
        each `msr manage` starts Django anew (seconds on a busy machine)."""
        return self.shell(
            "from django.core.management import call_command\n"
            "call_command('migrate', interactive=False, verbosity=0)\n"
            "from accounts.models import AccessToken\n"
            "from accounts.services import create_organization, create_user\n"
            "admin = create_user('admin', 'admin-password', is_admin=True)\n"
            f"create_organization({organization!r}, owner=admin)\n"
            f"{setup}\n"
            "print(AccessToken.issue(admin, name='ci')[1])").strip()

    def migrate_async(self) -> subprocess.Popen:
        return subprocess.Popen([MSR, "manage", "migrate", "--no-input", "-v", "0"], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def shell(self, code: str) -> str:
        """Run Python in the deployment (`msr manage shell -c`); returns its stdout."""
        return self.manage("shell", "--no-imports", "-c", code).stdout

    def start_web(self) -> str:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.web = Process([MSR, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"], self.env,
                           self.logs / f"web-{port}.log")
        self.web.wait_http(f"{self.url}/v2/")
        return self.url

    def start_worker(self, beat=True) -> Process:
        import redis

        argv = [MSR, "worker", "--concurrency", "2"] + (["--beat"] if beat else [])
        self.worker = Process(argv, self.env, self.logs / f"worker-{time.monotonic_ns()}.log")
        deadline = time.monotonic() + 60
        while " ready." not in self.worker.log():
            assert time.monotonic() < deadline and self.worker.popen.poll() is None, self.worker.log()
            time.sleep(0.2)
        redis.Redis.from_url(self.redis_url).ping()
        return self.worker

    def start(self, beat=True) -> str:
        """start_web and start_worker side by side."""
        return side_by_side(self.start_web, lambda: self.start_worker(beat=beat))[0]

    def kill_worker(self) -> None:
        """SIGKILL the worker's whole process group: no chance to finish or ack."""
        import signal

        os.killpg(self.worker.popen.pid, signal.SIGKILL)
        self.worker.popen.wait()

    def api(self, method, path, auth=("admin", "admin-password"), **kwargs) -> requests.Response:
        return requests.request(method, f"{self.url}/api/v0/{path.lstrip('/')}", auth=auth, timeout=60,
                                **kwargs)

    def stop(self) -> None:
        stop_all(self.worker, self.web)
        if self.pg_name:
            try:
                self._pg("DROP DATABASE IF EXISTS {0} WITH (FORCE)")
            except Exception:
                pass


def wait_for(predicate, timeout=60, interval=0.2, what="condition"):
    """Poll until `predicate()` returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
