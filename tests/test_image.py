"""docker/Dockerfile, built and run: the image of the README's Docker section serves a
registry that skopeo pushes to and pulls from, and the image's HEALTHCHECK follows the
address each role was started on.

Docker Hub is not needed: the base image is Debian bookworm made with
`debootstrap --variant=minbase` (python3 3.11, python3-venv, ca-certificates) and
`docker import`, passed as BASE_IMAGE; the tarball is kept in MSR_TEST_CACHE_DIR (default
/var/cache/msr-tests) and the private daemon's data root there too, so a second run
reuses the base image and the build's cached layers. The build passes PIP_INDEX_URL /
PIP_TRUSTED_HOST when the environment or pip's configuration has an http(s) index, and the
host's extra CAs (/usr/local/share/ca-certificates) as docker/ca/*.crt of a copy of the
build context. Containers run with `--network host` (the daemon has no bridge) against a
database of their own on the host's PostgreSQL (127.0.0.1:5432) and Redis.

Skipped, with the reason, where no image can be had: not root, no dockerd (a failure with
MSR_REQUIRE_CLIENTS=1), no debootstrap, the Debian mirror unreachable, no PostgreSQL.
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.dockerd import overlay_works, start_dockerd
from tests.images import make_image_layout
from tests.processes import free_port, need, run

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MSR_TEST_CACHE_DIR", "/var/cache/msr-tests"))
BASE_TAG = "msr-test-base:bookworm"
BASE_TARBALL = CACHE / "debootstrap-bookworm-minbase-python3.tar"
IMAGE = "msr-test:image"
MIRROR = os.environ.get("MSR_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
REDIS_URL = os.environ.get("MSR_IMAGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")

def _postgres() -> dict:
    """The server of DATABASE_URL when it is PostgreSQL (CI's first run), else the host's
    127.0.0.1:5432 as user postgres (the SQLite run: the containers still use PostgreSQL,
    as compose does)."""
    from urllib.parse import unquote, urlsplit

    url = urlsplit(os.environ.get("DATABASE_URL", ""))
    if url.scheme in ("postgres", "postgresql", "pgsql") and url.hostname:
        return {"host": url.hostname, "port": url.port or 5432, "user": unquote(url.username or "postgres"),
                "password": unquote(url.password or "")}
    return {"host": "127.0.0.1", "port": 5432, "user": "postgres", "password": ""}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def daemon():
    # overlay2 where it works: vfs copies the whole image for every build step and
    # container (about 50 s each here, against under a second)
    driver = os.environ.get("MSR_TEST_DOCKER_STORAGE_DRIVER") or ("overlay2" if overlay_works(CACHE) else "vfs")
    d = start_dockerd(CACHE / f"dockerd-image-{driver}", storage_driver=driver, keep_data=True)
    yield d
    d.stop()


def _debootstrap_tarball() -> Path:
    """Debian bookworm, minbase, with python3 and python3-venv: made once, then kept."""
    if BASE_TARBALL.exists():
        return BASE_TARBALL
    need("debootstrap", "/usr/sbin/debootstrap")
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = CACHE / f"rootfs-{os.getpid()}"
    shutil.rmtree(rootfs, ignore_errors=True)
    try:
        result = subprocess.run(
            ["/usr/sbin/debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
             "bookworm", str(rootfs), MIRROR], capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.skip(f"no base image: debootstrap bookworm from {MIRROR} exited {result.returncode} "
                  f"(is the Debian mirror reachable?):\n{(result.stdout + result.stderr)[-2000:]}")
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        partial = BASE_TARBALL.with_suffix(".tar.part")
        run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], timeout=600)
        partial.rename(BASE_TARBALL)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return BASE_TARBALL


@pytest.fixture(scope="module")
def base_image(daemon):
    if daemon.docker("image", "inspect", BASE_TAG, check=False).returncode != 0:
        tarball = _debootstrap_tarball()
        daemon.docker("import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                      "--change", "ENV LANG=C.UTF-8", str(tarball), BASE_TAG, timeout=600)
    return BASE_TAG


def _pip_setting(name: str) -> str | None:
    """An http(s) index from the environment or pip's configuration (file:// ones are this
    host's, not the container's)."""
    value = os.environ.get(f"PIP_{name.upper().replace('-', '_')}")
    if not value:
        result = subprocess.run([sys.executable, "-m", "pip", "config", "get", f"global.{name}"],
                                capture_output=True, text=True)
        value = result.stdout.strip() if result.returncode == 0 else None
    if name == "index-url" and value and not value.startswith(("http://", "https://")):
        return None
    return value or None


def _build_context(tmp: Path) -> Path:
    """A copy of the repository (what `docker build .` would send, before .dockerignore)
    plus the host's extra CAs in docker/ca/, and planted files the image must not get."""
    context = tmp / "context"
    shutil.copytree(ROOT, context, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "var", "cache-data", "__pycache__", "*.pyc"))
    for planted in (".venv/host-venv", "var/msr.sqlite3", "docker/.env"):
        (context / planted).parent.mkdir(parents=True, exist_ok=True)
        (context / planted).write_text("must not enter the image\n")
    for crt in sorted(Path("/usr/local/share/ca-certificates").rglob("*.crt")):
        shutil.copy(crt, context / "docker" / "ca" / f"host-{crt.name}")
    return context


@pytest.fixture(scope="module")
def image(daemon, base_image, tmp_path_factory):
    context = _build_context(tmp_path_factory.mktemp("image"))
    args = ["build", "--network", "host", "--force-rm", "-f", "docker/Dockerfile", "-t", IMAGE,
            "--build-arg", f"BASE_IMAGE={base_image}"]
    for name, arg in (("index-url", "PIP_INDEX_URL"), ("trusted-host", "PIP_TRUSTED_HOST")):
        value = _pip_setting(name)
        if value:
            args += ["--build-arg", f"{arg}={value}"]
    daemon.docker(*args, str(context), timeout=1800)
    # the previous run's image, now untagged, and containers a killed run left behind
    daemon.docker("container", "prune", "-f", check=False)
    daemon.docker("image", "prune", "-f", check=False)
    return IMAGE


@pytest.fixture
def database():
    """A fresh PostgreSQL database on the host for the containers, dropped afterwards."""
    import psycopg2

    pg = _postgres()
    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=5, **{k: v for k, v in pg.items() if v})
    except psycopg2.OperationalError as e:
        pytest.skip(f"no PostgreSQL at {pg['host']}:{pg['port']} for the containers: {e}")
    admin.autocommit = True
    name = f"msr_image_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        auth = f"{quote(pg['user'])}:{quote(pg['password'])}" if pg["password"] else quote(pg["user"])
        yield f"postgres://{auth}@{pg['host']}:{pg['port']}/{name}"  # in an env file, never argv
    finally:
        with admin.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


class Containers:
    """Containers and volumes of one test, removed by name at the end."""

    def __init__(self, daemon, prefix: str):
        self.daemon, self.prefix = daemon, prefix
        self.names: list[str] = []
        self.volumes: list[str] = []

    def run(self, role: str, *args, env_file: Path, env: dict | None = None, detach=True):
        name = f"{self.prefix}-{role}"
        self.names.append(name)
        argv = ["run", "--name", name, "--network", "host", "--env-file", str(env_file)]
        for key in env or {}:
            argv += ["-e", key]  # the value from the environment, never on the command line
        argv += ["-d"] if detach else []
        self.daemon.docker(*argv, *args, env=env, timeout=600)
        return name

    def volume(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        self.daemon.docker("volume", "create", name)
        self.volumes.append(name)
        return name

    def inspect(self, name: str) -> dict:
        return json.loads(self.daemon.docker("inspect", name).stdout)[0]

    def logs(self, name: str) -> str:
        result = self.daemon.docker("logs", name, check=False)
        return (result.stdout + result.stderr)[-4000:]

    def wait_healthy(self, name: str, timeout=180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.inspect(name)["State"]
            health = state.get("Health", {})
            if health.get("Status") == "healthy":
                return health
            if health.get("Status") == "unhealthy" or not state["Running"]:
                break
            time.sleep(0.5)
        raise AssertionError(f"{name} is {state.get('Status')}, health {json.dumps(health, indent=1)[-3000:]}\n"
                             f"logs:\n{self.logs(name)}")

    def remove(self):
        for name in reversed(self.names):
            self.daemon.docker("rm", "-f", "-v", name, check=False)
        for name in self.volumes:
            self.daemon.docker("volume", "rm", "-f", name, check=False)


@pytest.fixture
def containers(daemon):
    c = Containers(daemon, f"msr-image-{uuid.uuid4().hex[:8]}")
    yield c
    c.remove()


def test_the_image_holds_only_what_msr_needs(daemon, image):
    listing = daemon.docker("run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
                            "ls -A /app; echo ---; ls -A /app/docker; echo ---; "
                            "ls /app/templates | head -3; ls /app/msr/static | head -3; echo ---; "
                            "ls /app/.venv; echo ---; ls /usr/local/share/ca-certificates/msr; echo ---; "
                            "pg_dump --version; echo ---; "
                            "python -c 'import ldap, django_auth_ldap; print(ldap.__version__)'; "
                            "command -v gcc || echo no-compiler; echo ---; id -un; msr --help").stdout
    top, docker_dir, assets, venv, cas, pg_dump, directory, rest = listing.split("---\n")
    assert set(top.split()) == {".venv", "pyproject.toml", "msr", "accounts", "caches", "mirroring", "protocol",
                                "templates", "docker", "msr.egg-info"}, top  # no tests, bench, docs, .git, var
    assert docker_dir.split() == ["ca"]  # no docker/.env
    assert len(assets.split()) >= 2  # templates and static files
    assert "host-venv" not in venv  # the image's own virtual environment, not the host's
    assert all(name.endswith(".crt") for name in cas.split())  # docker/ca's README is not a CA
    assert pg_dump.startswith("pg_dump (PostgreSQL) 15")  # `msr manage backup` in the image
    # The company directory works in the image (MSR_LDAP_URL); the compiler python-ldap
    # was built with is gone.
    assert directory.split() == [directory.split()[0], "no-compiler"] and directory.startswith("3."), directory
    assert rest.startswith("msr\n") and "healthcheck" in rest
    config = json.loads(daemon.docker("image", "inspect", image).stdout)[0]["Config"]
    assert not config.get("Volumes")  # no anonymous volumes for roles that do not need /data
    assert config["Healthcheck"]["Test"] == ["CMD", "msr", "healthcheck"]


def test_serve_in_the_image_on_its_own_port_push_and_pull_with_skopeo(daemon, image, database, containers,
                                                                       tmp_path):
    need("skopeo")
    port, cache_port = free_port(), free_port()
    password = secrets.token_urlsafe(16)
    env_file = tmp_path / "msr.env"
    env_file.touch(mode=0o600)
    env_file.write_text(
        f"DATABASE_URL={database}\n"
        f"MSR_SECRET_KEY={secrets.token_urlsafe(50)}\n"
        f"MSR_PUBLIC_URL=http://127.0.0.1:{port}\n"
        f"MSR_BROKER_URL={REDIS_URL}\n"
        "MSR_ADMIN_USER=admin\n"
        f"MSR_NEW_USER_PASSWORD={password}\n")
    data = containers.volume("data")

    # compose's migrate job: schema, then the admin (password from the environment)
    containers.run("migrate", "-v", f"{data}:/data", "--entrypoint", "sh", image, "-c",
                   'msr manage migrate --no-input && msr manage adduser "$MSR_ADMIN_USER" --admin --if-missing',
                   env_file=env_file, detach=False)

    # the web role on a port that is not the image's default, with quick health checks
    health = ["--health-interval", "1s", "--health-start-period", "60s"]
    web = containers.run("web", "-v", f"{data}:/data", *health, image,
                         "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1", env_file=env_file)
    state = containers.wait_healthy(web)
    assert f"http://127.0.0.1:{port}/healthz: 200" in state["Log"][-1]["Output"]
    mounts = containers.inspect(web)["Mounts"]
    assert [(m["Type"], m["Name"], m["Destination"]) for m in mounts] == [("volume", data, "/data")]
    # readiness (database, broker, storage) from inside the container, as compose checks it
    ready = daemon.docker("exec", web, "msr", "healthcheck", "--ready", check=False)
    assert ready.returncode == 0, ready.stdout + ready.stderr

    # push an image with skopeo and pull it back: same manifest digest, same blobs
    authfile = tmp_path / "auth.json"
    authfile.write_text("{}")
    host = f"127.0.0.1:{port}"
    run(["skopeo", "login", "--tls-verify=false", "--authfile", str(authfile), "-u", "admin",
         "--password-stdin", host], input=password)
    source, back = tmp_path / "source", tmp_path / "back"
    digest = make_image_layout(source, layer_sizes=(200_000, 1_000_000))
    run(["skopeo", "copy", "--dest-tls-verify=false", "--authfile", str(authfile),
         f"oci:{source}:v1", f"docker://{host}/admin/app:v1"])
    inspected = json.loads(run(["skopeo", "inspect", "--tls-verify=false", "--authfile", str(authfile),
                                f"docker://{host}/admin/app:v1"]).stdout)
    assert inspected["Digest"] == digest
    run(["skopeo", "copy", "--src-tls-verify=false", "--authfile", str(authfile),
         f"docker://{host}/admin/app:v1", f"oci:{back}:v1"])
    blobs = sorted(p.name for p in (source / "blobs/sha256").iterdir())
    assert sorted(p.name for p in (back / "blobs/sha256").iterdir()) == blobs
    for blob in blobs:
        assert (back / "blobs/sha256" / blob).read_bytes() == (source / "blobs/sha256" / blob).read_bytes()
    # the blobs are on the data volume: a registry restarted on it still serves them
    daemon.docker("restart", web)
    containers.wait_healthy(web)
    again = json.loads(run(["skopeo", "inspect", "--tls-verify=false", "--authfile", str(authfile),
                            f"docker://{host}/admin/app:v1"]).stdout)
    assert again["Digest"] == digest

    # a cache node, its bind from MSR_CACHE_BIND: healthy there, and no anonymous volume
    cache_env_file = tmp_path / "cache.env"
    cache_env_file.write_text(f"MSR_CACHE_BIND=127.0.0.1:{cache_port}\n")
    cache = containers.run("cache", *health, image, "cache", "--name", "local", "--msr", f"http://{host}",
                           "--data", "/cache", "--workers", "1", env_file=cache_env_file)
    state = containers.wait_healthy(cache)
    assert f"http://127.0.0.1:{cache_port}/healthz: 200" in state["Log"][-1]["Output"]
    assert containers.inspect(cache)["Mounts"] == []

    # a worker: healthy when its own Celery node answers a ping on the broker
    worker = containers.run("worker", "-v", f"{data}:/data", "--health-interval", "2s",
                            "--health-start-period", "120s", image, "worker", "--concurrency", "1",
                            env_file=env_file)
    state = containers.wait_healthy(worker, timeout=240)
    assert "pong" in state["Log"][-1]["Output"]

    # the scheduler, as compose runs it: healthy while it writes its schedule file
    beat = containers.run("beat", "-v", f"{data}:/data", *health, "--entrypoint", "celery", image,
                          "-A", "msr", "beat", "--schedule", "/data/celerybeat-schedule",
                          "--loglevel", "INFO", env_file=env_file)
    state = containers.wait_healthy(beat)
    assert "beat: /data/celerybeat-schedule written" in state["Log"][-1]["Output"]
